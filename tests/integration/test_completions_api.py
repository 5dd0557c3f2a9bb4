"""Chat and text completions through the openai SDK, streaming included, on the real default base model."""

import httpx
import openai
import pytest

from app.core.settings import Settings

CHAT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture
def base(settings: Settings) -> str:
    return settings.default_base_model


def test_greedy_chat_reply_reports_usage_and_length(client: openai.OpenAI, base: str) -> None:
    reply = client.chat.completions.create(model=base, messages=CHAT, max_tokens=3, temperature=0)

    assert reply.object == "chat.completion" and reply.model == base
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert reply.usage.prompt_tokens > 5 and reply.usage.total_tokens == reply.usage.prompt_tokens + 3
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content


def test_streamed_chat_adds_up_to_the_whole_reply(client: openai.OpenAI, base: str) -> None:
    whole = client.chat.completions.create(model=base, messages=CHAT, max_tokens=12, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=base, messages=CHAT, max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip

    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed in pieces
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_a_stop_sequence_ends_the_reply_before_it(client: openai.OpenAI, base: str) -> None:
    text = client.chat.completions.create(model=base, messages=CHAT, max_tokens=16, temperature=0).choices[0]
    stop = text.message.content[4:7]
    cut = client.chat.completions.create(model=base, messages=CHAT, max_tokens=16, temperature=0, stop=[stop])

    assert cut.choices[0].message.content == text.message.content[: text.message.content.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_the_same_seed_gives_the_same_choices(client: openai.OpenAI, base: str) -> None:
    def sample():
        reply = client.chat.completions.create(model=base, messages=CHAT, max_tokens=10, temperature=1, seed=11, n=2)
        return [choice.message.content for choice in reply.choices]

    first = sample()
    assert first == sample()
    assert len(first) == 2


def test_streamed_choices_each_add_up_to_their_whole_text(client: openai.OpenAI, base: str) -> None:
    options = {"model": base, "messages": CHAT, "max_tokens": 10, "temperature": 1, "seed": 5, "n": 3}
    whole = [choice.message.content for choice in client.chat.completions.create(**options).choices]
    texts, finishes = ["", "", ""], [0, 0, 0]
    for chunk in client.chat.completions.create(**options, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finishes[choice.index] += choice.finish_reason is not None

    assert texts == whole and finishes == [1, 1, 1]


def test_too_many_choices_is_refused(client: openai.OpenAI, base: str, settings: Settings) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=base, messages=CHAT, n=settings.max_choices + 1)
    assert error.value.param == "n" and f"at most {settings.max_choices}" in error.value.message


def test_text_completions_whole_and_streamed(client: openai.OpenAI, base: str) -> None:
    whole = client.completions.create(model=base, prompt="Name three colours.", max_tokens=8, temperature=0)
    streamed = list(
        client.completions.create(model=base, prompt="Name three colours.", max_tokens=8, temperature=0, stream=True)
    )

    assert whole.object == "text_completion" and whole.choices[0].text
    assert "".join(chunk.choices[0].text for chunk in streamed) == whole.choices[0].text
    assert streamed[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    # a prompt is one user turn through the chat template, as prompt/completion examples train
    chat = client.chat.completions.create(model=base, messages=CHAT, max_tokens=8, temperature=0)
    assert whole.choices[0].text == chat.choices[0].message.content


def test_chat_log_probabilities_whole_and_streamed(client: openai.OpenAI, base: str) -> None:
    options = {"model": base, "messages": CHAT, "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    whole = client.chat.completions.create(**options)
    streamed = list(client.chat.completions.create(**options, stream=True))
    plain = client.chat.completions.create(model=base, messages=CHAT, max_tokens=2, temperature=0)

    choice = whole.choices[0]
    content = choice.logprobs.content
    assert "".join(entry.token for entry in content) == choice.message.content
    assert len(content) == whole.usage.completion_tokens - (choice.finish_reason == "stop")  # no end-of-turn token
    for entry in content:
        assert entry.logprob < 0 and bytes(entry.bytes).decode() == entry.token
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert (entry.top_logprobs[0].token, entry.top_logprobs[0].logprob) == (entry.token, entry.logprob)  # greedy
    per_chunk = [chunk.choices[0].logprobs for chunk in streamed if chunk.choices and chunk.choices[0].logprobs]
    in_chunks = [entry for logprobs in per_chunk for entry in logprobs.content]
    assert [entry.token for entry in in_chunks] == [entry.token for entry in content]
    assert [entry.logprob for entry in in_chunks] == pytest.approx([entry.logprob for entry in content], abs=1e-4)
    assert plain.choices[0].logprobs is None


def test_top_logprobs_without_logprobs_is_refused(client: openai.OpenAI, base: str) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=base, messages=CHAT, max_tokens=2, top_logprobs=2)
    assert error.value.param == "top_logprobs" and "logprobs" in error.value.message


def test_text_completion_log_probabilities_whole_and_streamed(client: openai.OpenAI, base: str) -> None:
    options = {"model": base, "prompt": "Name three colours.", "max_tokens": 8, "temperature": 0, "logprobs": 2}
    whole = client.completions.create(**options)
    streamed = list(client.completions.create(**options, stream=True))

    text, logprobs = whole.choices[0].text, whole.choices[0].logprobs
    assert "".join(logprobs.tokens) == text
    offsets = zip(logprobs.tokens, logprobs.text_offset, strict=True)
    assert all(text[offset:].startswith(token) for token, offset in offsets)
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert top[token] == logprob == max(top.values()) and len(top) == 2  # greedy: the sampled token is the best
    chunks = [chunk.choices[0].logprobs for chunk in streamed if chunk.choices[0].logprobs]
    assert [token for chunk in chunks for token in chunk.tokens] == logprobs.tokens
    assert [offset for chunk in chunks for offset in chunk.text_offset] == logprobs.text_offset
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(**(options | {"logprobs": 6}))
    assert error.value.param == "logprobs"


def test_a_client_that_disconnects_frees_the_engine(
    client: openai.OpenAI, api_base_url: str, org_key: str, base: str
) -> None:
    endless = [{"role": "user", "content": "Write the numbers from 1 to 5000, separated by commas."}]
    probe = client.chat.completions.create(model=base, messages=endless, max_tokens=64, temperature=0)
    assert probe.choices[0].finish_reason == "length"  # this prompt keeps the model going
    headers = {"Authorization": f"Bearer {org_key}"}
    body = {"model": base, "messages": endless, "max_tokens": 2048, "temperature": 0, "stream": True}
    with httpx.Client(base_url=api_base_url, headers=headers, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            next(response.iter_lines())  # the first event, then hang up long before 2048 tokens
        # Served at once: the abandoned generation (minutes of tokens at this CPU's pace) was cancelled.
        quick = http.post("/v1/chat/completions", json={"model": base, "messages": CHAT, "max_tokens": 2}, timeout=30)
    assert quick.status_code == 200
