"""A model that fails while generating, through the openai SDK on the tiny model: the request gets a 500 naming the
model (or an error chunk on a stream) at once, never a hang, and the next request is served. The API here has an
engine of its own, so the failures injected do not reach other modules' requests."""

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from transformers import LlamaForCausalLM

from app.api.main import create_app
from app.core.settings import Settings
from app.serving import batching
from app.serving.batching import ContinuousBatcher
from tests.helpers.injected_failures import fail_once
from tests.helpers.services import serving
from tests.helpers.tiny_models import TINY_MODEL_ID

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
WAIT_S = 30  # the client's timeout: far above a tiny model's reply, so a hung request fails the test


@pytest.fixture(scope="module")
def own_api(settings: Settings) -> Iterator[str]:
    with serving(create_app(settings)) as url:
        yield url


@pytest.fixture
def chat(own_api: str, org_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{own_api}/v1", api_key=org_key, max_retries=0, timeout=WAIT_S)


def reply(chat: openai.OpenAI, **options: Any) -> str:
    answer = chat.chat.completions.create(model=TINY_MODEL_ID, messages=CHAT, max_tokens=6, temperature=0, **options)
    return answer.choices[0].message.content or ""


def test_a_model_whose_cache_cannot_be_built_gets_a_500_naming_it_every_time_and_serves_once_it_can(
    chat: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = reply(chat)

    def unsupported(*_: object) -> None:
        raise NotImplementedError("continuous batching needs full-attention cache layers (no sliding window)")

    monkeypatch.setattr(batching, "new_cache", unsupported)
    for _ in range(2):  # the second request is not left waiting behind the first
        with pytest.raises(openai.InternalServerError) as failed:
            reply(chat)
        assert failed.value.status_code == 500 and failed.value.code == "generation_failed"
        assert f"The model '{TINY_MODEL_ID}' failed while generating: NotImplementedError: " in failed.value.message

    monkeypatch.undo()
    assert reply(chat) == expected


def test_a_stream_whose_decode_step_fails_ends_with_an_error_chunk_naming_the_model(
    chat: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = reply(chat)
    fail_once(
        monkeypatch, LlamaForCausalLM, "forward", RuntimeError("out of memory"),
        lambda *_, **inputs: inputs["input_ids"].shape[1] == 1,
    )  # fmt: skip

    stream = chat.chat.completions.create(model=TINY_MODEL_ID, messages=CHAT, max_tokens=6, temperature=0, stream=True)
    with pytest.raises(openai.APIError) as failed:
        for _ in stream:
            pass

    assert failed.value.code == "generation_failed" and failed.value.type == "server_error"
    assert f"The model '{TINY_MODEL_ID}' failed while generating: RuntimeError: out of memory" in failed.value.message
    assert reply(chat) == expected


def test_a_decode_loop_that_breaks_fails_its_request_and_the_next_one_is_served(
    chat: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = reply(chat)
    fail_once(monkeypatch, ContinuousBatcher, "_take_waiting", AssertionError("a bug in the decode loop"))

    with pytest.raises(openai.InternalServerError) as failed:
        reply(chat)

    assert failed.value.code == "generation_failed" and TINY_MODEL_ID in failed.value.message
    assert reply(chat) == expected
