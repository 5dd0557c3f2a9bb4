"""A failure anywhere in generation (building the cache, a prefill or decode forward pass, sampling, loading an
adapter, the decode loop itself) reaches the requests it broke at once, as an error naming the model, and the engine
serves the next request. Every wait here has a timeout, so a request left hanging fails the test instead of hanging
it."""

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

from app.api.generation.engine_errors import http_error
from app.ml.chat_format import render_prompt_ids
from app.serving import InferenceEngine, batching
from app.serving.answers import answering, greedy_answers
from app.serving.backend import SamplingParams
from app.serving.batching import ContinuousBatcher
from app.serving.errors import EngineError, GenerationFailed
from app.serving.lora_slots import AdapterSlots
from tests.helpers.injected_failures import always, fail_once
from tests.helpers.tiny_models import TINY_MODEL_ID

T = TypeVar("T")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WAIT_S = 30.0  # far above what any request here takes (milliseconds): past it, the request hangs


def within(action: Callable[[], T], timeout_s: float = WAIT_S) -> T:
    """`action()`'s result, or its error raised here; an action still running after `timeout_s` fails the test."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(action())
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)  # a hung action must not hang the test run
    thread.start()
    thread.join(timeout_s)
    assert outcome, f"still waiting after {timeout_s:g} s"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _prompt_width(*_: Any, **inputs: Any) -> int:
    return int(inputs["input_ids"].shape[1])


FAILURES: dict[str, tuple[object, str, Exception, Callable[..., bool]]] = {
    "cache creation": (batching, "new_cache", NotImplementedError("sliding-window layers"), always),
    "prefill": (LlamaForCausalLM, "forward", RuntimeError("out of memory"), lambda *a, **k: _prompt_width(**k) > 1),
    "decode": (LlamaForCausalLM, "forward", RuntimeError("out of memory"), lambda *a, **k: _prompt_width(**k) == 1),
    "sampling": (batching, "_next_tokens", RuntimeError("probability tensor contains nan"), always),
    "decode loop": (ContinuousBatcher, "_take_waiting", AssertionError("a bug in the decode loop"), always),
}


@pytest.fixture
def engine(registry, tmp_path) -> InferenceEngine:
    return InferenceEngine(registry, lambda name, directory: None, cache_dir=tmp_path / "adapters")


def tokens(engine: InferenceEngine, adapter: str | None = None, max_tokens: int = 6) -> list[int]:
    """A greedy reply's token ids, read to its end (the stream's error raised), within `WAIT_S`."""
    prompt_ids = render_prompt_ids(engine.tokenizer(TINY_MODEL_ID), QUESTION)
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    stream = within(lambda: engine.stream_tokens(TINY_MODEL_ID, adapter, prompt_ids, params))
    return within(lambda: [token.id for token in stream])


@pytest.mark.parametrize("point", FAILURES)
def test_a_failure_reaches_the_request_as_an_error_naming_the_model_and_the_next_request_is_served(
    engine, monkeypatch, point
):
    expected = tokens(engine)
    owner, name, error, when = FAILURES[point]
    fail_once(monkeypatch, owner, name, error, when)

    with pytest.raises(GenerationFailed) as failed:
        tokens(engine)

    assert f"The model '{TINY_MODEL_ID}' failed while generating: {type(error).__name__}: {error}" in str(failed.value)
    answer = http_error(failed.value).response()  # what the API says of it
    assert answer.status_code == 500 and TINY_MODEL_ID in answer.body.decode()
    assert tokens(engine) == expected


def test_a_cache_that_cannot_be_built_fails_every_newcomer_quickly_and_running_requests_go_on(engine, monkeypatch):
    expected = tokens(engine, max_tokens=300)  # 0.6 s of decode steps: the newcomers come while it runs
    prompt_ids = render_prompt_ids(engine.tokenizer(TINY_MODEL_ID), QUESTION)
    running = engine.stream_tokens(TINY_MODEL_ID, None, prompt_ids, SamplingParams(max_tokens=300, temperature=0))
    first = within(lambda: next(running)).id  # its cache is built: it decodes from here on
    decode_steps: list[None] = []
    forward = LlamaForCausalLM.forward

    def counted(*args: Any, **inputs: Any) -> Any:
        if _prompt_width(**inputs) == 1:
            decode_steps.append(None)
        return forward(*args, **inputs)

    def unsupported(*_: Any) -> None:
        raise NotImplementedError("continuous batching needs full-attention cache layers (no sliding window)")

    monkeypatch.setattr(LlamaForCausalLM, "forward", counted)
    monkeypatch.setattr(batching, "new_cache", unsupported)
    for _ in range(3):
        with pytest.raises(GenerationFailed, match="full-attention cache layers"):
            tokens(engine)
    steps_when_they_failed = len(decode_steps)

    assert [first, *within(lambda: [token.id for token in running])] == expected
    assert steps_when_they_failed < len(decode_steps)  # it was still decoding when they failed


@pytest.fixture
def adapter_dir(make_model, tmp_path) -> Path:
    """A LoRA adapter of random, non-zero weights for the tiny model, saved by peft."""
    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    directory = tmp_path / "saved"
    get_peft_model(make_model(), config).save_pretrained(directory)
    return directory


def test_an_adapter_that_fails_to_load_fails_its_request_with_the_model_named_and_the_next_load_works(
    registry, adapter_dir, tmp_path, monkeypatch
):
    def fetch(name: str, destination: Path) -> None:
        for file in adapter_dir.iterdir():
            (destination / file.name).write_bytes(file.read_bytes())

    engine = InferenceEngine(registry, fetch, cache_dir=tmp_path / "adapters")
    base = tokens(engine)
    fail_once(monkeypatch, AdapterSlots, "load", OSError("adapter_model.safetensors: unexpected end of file"))

    with pytest.raises(GenerationFailed) as failed:
        tokens(engine, "ft:tuned")

    assert str(failed.value).startswith(
        f"The model '{TINY_MODEL_ID}' failed while loading the fine-tuned model's adapter: OSError: "
    )
    assert tokens(engine) == base  # the base model is served meanwhile
    tuned = tokens(engine, "ft:tuned")
    assert tuned != base  # loaded at the second request
    assert engine.loaded_adapters(TINY_MODEL_ID) == ["ft:tuned"]


def test_the_held_out_answers_get_the_error_instead_of_waiting_for_ever(make_model, tokenizer, monkeypatch):
    def unsupported(*_: Any) -> None:
        raise NotImplementedError("continuous batching needs full-attention cache layers (no sliding window)")

    monkeypatch.setattr(batching, "new_cache", unsupported)
    prompts = [QUESTION, [{"role": "user", "content": "Hello!"}]]
    with answering(make_model(), tokenizer, {}) as (batcher, end_ids), pytest.raises(GenerationFailed) as failed:
        within(lambda: greedy_answers(batcher, tokenizer, end_ids, prompts, [None], max_new_tokens=4))

    assert "NotImplementedError: continuous batching needs full-attention cache layers" in str(failed.value)


def test_a_replica_passes_the_failure_on_to_the_api_as_the_same_500():
    failed = GenerationFailed.of(TINY_MODEL_ID, RuntimeError("out of memory"))

    received = EngineError.from_wire(failed.wire())  # what the API reads off a replica's stream

    assert isinstance(received, GenerationFailed) and received.message == failed.message
    answer = http_error(received)
    assert answer.status_code == 500
    assert answer.message == f"{failed.message}; retry, and report it if it persists"
