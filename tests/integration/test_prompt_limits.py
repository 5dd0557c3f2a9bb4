"""Prompts against the model's context, through the openai SDK on the tiny model (512 positions): a prompt that does
not fit, alone or with the completion asked for, is a 400 `context_length_exceeded` in OpenAI's words; a prompt of
megabytes is refused by its length in characters before it is tokenized; tokenizing never holds the event loop; and
stop sequences are bounded in length."""

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from transformers import PreTrainedTokenizerFast

from app.api.chat.schemas import MAX_STOP_CHARACTERS
from app.api.generation import prompts
from app.ml.chat_format import render_prompt_ids
from tests.helpers.tiny_models import TINY_MODEL_ID

CONTEXT = 512  # max_position_embeddings of the tiny model
SENTENCE = "Paris is the capital of France. "


def _tokens(tokenizer: PreTrainedTokenizerFast, content: str) -> int:
    return len(render_prompt_ids(tokenizer, [{"role": "user", "content": content}]))


def _user(content: str) -> list[Any]:
    return [{"role": "user", "content": content}]


def test_a_chat_longer_than_the_context_gets_openai_s_context_length_exceeded(
    client: openai.OpenAI, tokenizer: PreTrainedTokenizerFast
) -> None:
    content = SENTENCE * 100
    tokens = _tokens(tokenizer, content)
    assert tokens > CONTEXT

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=TINY_MODEL_ID, messages=_user(content))

    assert refused.value.status_code == 400
    assert refused.value.code == "context_length_exceeded" and refused.value.param == "messages"
    assert refused.value.body["message"] == (  # type: ignore[index]
        f"This model's maximum context length is {CONTEXT} tokens. However, your messages resulted in {tokens} "
        "tokens. Please reduce the length of the messages."
    )


def test_a_prompt_that_fits_only_without_the_completion_asked_for_is_refused(
    client: openai.OpenAI, tokenizer: PreTrainedTokenizerFast
) -> None:
    content = SENTENCE * 50
    tokens = _tokens(tokenizer, content)
    assert tokens < CONTEXT < tokens + 200

    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model=TINY_MODEL_ID, messages=_user(content), max_tokens=200)
    with pytest.raises(openai.BadRequestError) as completion:
        client.completions.create(model=TINY_MODEL_ID, prompt=["Hello!", content], max_tokens=200)

    assert chat.value.code == completion.value.code == "context_length_exceeded"
    assert chat.value.body["message"] == (  # type: ignore[index]
        f"This model's maximum context length is {CONTEXT} tokens. However, you requested {tokens + 200} tokens "
        f"({tokens} in the messages, 200 in the completion). Please reduce the length of the messages or completion."
    )
    assert completion.value.param == "prompt"
    assert completion.value.body["message"] == (  # type: ignore[index]
        f"This model's maximum context length is {CONTEXT} tokens, however you requested {tokens + 200} tokens "
        f"({tokens} in your prompt; 200 for the completion). Please reduce your prompt; or completion length."
    )


def test_without_max_tokens_the_completion_gets_what_the_context_leaves(
    client: openai.OpenAI, tokenizer: PreTrainedTokenizerFast
) -> None:
    content = SENTENCE * 50

    reply = client.chat.completions.create(model=TINY_MODEL_ID, messages=_user(content), temperature=0)

    assert reply.usage is not None and reply.usage.prompt_tokens == _tokens(tokenizer, content)
    assert reply.usage.total_tokens <= CONTEXT


def test_a_prompt_of_megabytes_is_refused_by_its_length_before_it_is_tokenized(
    client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenized: list[object] = []
    monkeypatch.setattr(prompts, "render_prompt_ids", lambda *args: tokenized.append(args) or [])
    huge = "hello world " * 150_000  # 1.8 MB, under the body ceiling

    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model=TINY_MODEL_ID, messages=_user(huge))
    with pytest.raises(openai.BadRequestError) as completion:
        client.completions.create(model=TINY_MODEL_ID, prompt=huge)

    for refused in (chat, completion):
        assert refused.value.code == "context_length_exceeded"
        assert f" {len(huge)} characters long, more than {CONTEXT} tokens can hold" in refused.value.message
    assert tokenized == []


@pytest.mark.parametrize(
    "step",
    ["render_prompt_ids", "resolve"],
    ids=["while-a-prompt-is-tokenized", "while-the-model-is-looked-up"],  # a slow database holds the lookup up
)
def test_the_event_loop_answers_while_a_prompt_is_prepared(
    client: openai.OpenAI, api_base_url: str, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    entered, release = threading.Event(), threading.Event()
    original = getattr(prompts, step)

    def held(*args: Any) -> Any:
        entered.set()
        release.wait(timeout=120)  # on the event loop, this would keep /healthz from answering meanwhile
        return original(*args)

    monkeypatch.setattr(prompts, step, held)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            client.chat.completions.create, model=TINY_MODEL_ID, messages=_user("Hello!"), max_tokens=2
        )
        assert entered.wait(timeout=120)
        try:
            health = httpx.get(f"{api_base_url}/healthz", timeout=60)
        finally:
            release.set()
        reply = pending.result()

    assert health.status_code == 200
    assert reply.usage is not None and reply.usage.completion_tokens <= 2


def test_a_stop_sequence_longer_than_the_limit_is_refused_naming_it(client: openai.OpenAI) -> None:
    long_stop = "x" * (MAX_STOP_CHARACTERS + 1)

    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model=TINY_MODEL_ID, messages=_user("Hello!"), stop=["ok", long_stop])
    with pytest.raises(openai.BadRequestError) as completion:
        client.completions.create(model=TINY_MODEL_ID, prompt="Hello!", stop=long_stop)
    accepted = client.chat.completions.create(
        model=TINY_MODEL_ID, messages=_user("Hello!"), max_tokens=2, stop="a stop longer than four characters"
    )

    for refused in (chat, completion):
        assert refused.value.param == "stop"
        assert f"at most {MAX_STOP_CHARACTERS} characters" in refused.value.message
    assert accepted.choices
