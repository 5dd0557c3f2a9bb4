"""Continuous batching: every row of a mixed-adapter batch must generate what it would generate alone."""

import threading
from collections.abc import Iterator
from contextlib import nullcontext

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from app.chat_format import render_prompt_ids
from app.inference.batching import ContinuousBatcher, TokenStream

QUESTIONS = ["Hello!", "What is the capital of France? Tell me a joke.", "How are you today?"]
ADAPTERS = ["first", "second"]


@pytest.fixture(scope="module")
def peft_model(make_model) -> PeftModel:
    """The tiny model with two LoRA adapters of random, non-zero weights: each clearly changes the replies."""

    def config() -> LoraConfig:
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)

    torch.manual_seed(1)
    model = get_peft_model(make_model(), config(), adapter_name=ADAPTERS[0])
    torch.manual_seed(2)
    model.add_adapter(ADAPTERS[1], config())
    return model.eval()


@pytest.fixture(scope="module")
def prompts(tokenizer: PreTrainedTokenizerFast) -> list[list[int]]:
    ids = [render_prompt_ids(tokenizer, [{"role": "user", "content": question}]) for question in QUESTIONS]
    assert len({len(prompt) for prompt in ids}) == len(ids)  # different lengths, so rows are padded
    return ids


@pytest.fixture(scope="module")
def eos(tokenizer: PreTrainedTokenizerFast) -> set[int]:
    return {tokenizer.eos_token_id}


def solo(
    model: PreTrainedModel | PeftModel, prompt: list[int], adapter: str | None, eos: set[int], n: int = 12
) -> list[int]:
    """Greedy tokens of one request generated alone by `generate`, end-of-turn token included."""
    input_ids = torch.tensor([prompt])
    options = {"max_new_tokens": n, "do_sample": False, "eos_token_id": sorted(eos), "pad_token_id": 0}
    with torch.inference_mode():
        if adapter is not None:
            model.set_adapter(adapter)
        scope = model.disable_adapter() if adapter is None and isinstance(model, PeftModel) else nullcontext()
        with scope:
            output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **options)
    return output[0, len(prompt) :].tolist()


@pytest.fixture
def reference(peft_model, prompts, eos):
    return lambda prompt, adapter, n=12: solo(peft_model, prompts[prompt], adapter, eos, n)


class Stepper:
    """A model source that lets the decode thread take only the steps the test allows."""

    def __init__(self, model: PeftModel) -> None:
        self.model, self._permits, self._changed = model, 0, threading.Condition()

    def __call__(self) -> PeftModel:
        with self._changed:
            self._changed.wait_for(lambda: self._permits > 0)
            self._permits -= 1
        return self.model

    def allow(self, steps: int = 10**9) -> None:
        with self._changed:
            self._permits += steps
            self._changed.notify_all()


@pytest.fixture
def forward_shapes(peft_model) -> Iterator[list[tuple[int, int]]]:
    """The shape of the input ids of every forward pass."""
    shapes: list[tuple[int, int]] = []
    hook = peft_model.get_base_model().register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    yield shapes
    hook.remove()


@pytest.fixture
def batcher(peft_model) -> Iterator[ContinuousBatcher]:
    batcher = ContinuousBatcher(lambda: peft_model, "cpu", max_batch_size=8)
    yield batcher
    batcher.close()


@pytest.fixture
def stepper(peft_model) -> Stepper:
    return Stepper(peft_model)


@pytest.fixture
def stepped_batcher(stepper) -> Iterator[ContinuousBatcher]:
    batcher = ContinuousBatcher(stepper, "cpu", max_batch_size=8)
    yield batcher
    stepper.allow()
    batcher.close()


def greedy(
    batcher: ContinuousBatcher, prompt: list[int], adapter: str | None, eos: set[int], n: int = 12
) -> TokenStream:
    return batcher.submit(prompt, adapter, n, temperature=0, top_p=1, seed=None, eos_token_ids=eos)


def submit_together(batcher: ContinuousBatcher, requests: list[tuple]) -> list[TokenStream]:
    """Submit while no step runs, so that the next step prefills them all."""
    return batcher.run_between_steps(lambda: [greedy(batcher, *request) for request in requests])


def take(stream: TokenStream, n: int) -> list[int]:
    return [next(stream) for _ in range(n)]


JOBS = [(0, "first"), (1, "second"), (2, None), (1, "first"), (0, None)]


@pytest.mark.parametrize("max_prefill_tokens", [512, 1], ids=["prefilled-together", "one-row-per-step"])
def test_every_row_of_a_mixed_batch_generates_what_it_would_alone(
    peft_model, prompts, eos, reference, max_prefill_tokens
):
    expected = [reference(prompt, adapter) for prompt, adapter in JOBS]
    assert len({tuple(tokens) for tokens in expected}) == len(JOBS)  # adapters do change the replies
    batcher = ContinuousBatcher(lambda: peft_model, "cpu", max_prefill_tokens=max_prefill_tokens)
    try:
        streams = submit_together(batcher, [(prompts[prompt], adapter, eos) for prompt, adapter in JOBS])
        assert [list(stream) for stream in streams] == expected
    finally:
        batcher.close()


def test_a_request_joins_the_running_batch(stepped_batcher, stepper, prompts, eos, reference, forward_shapes):
    expected = [reference(0, "first", 16), reference(1, "second", 16), reference(2, None)]
    first, second = submit_together(stepped_batcher, [(prompts[0], "first", eos, 16), (prompts[1], "second", eos, 16)])
    stepper.allow(2)  # prefill with a decode step, then one more decode step: 3 tokens each
    started = take(first, 3)

    third = greedy(stepped_batcher, prompts[2], None, eos)
    stepper.allow()

    assert [started + list(first), list(second), list(third)] == expected
    assert (3, 1) in forward_shapes  # a decode step ran the three rows together


def test_cancelled_stream_ends_and_its_row_leaves_the_batch(
    stepped_batcher, stepper, prompts, eos, reference, forward_shapes
):
    expected = reference(0, None)
    forward_shapes.clear()  # forget the reference's own forward passes
    doomed, survivor = submit_together(stepped_batcher, [(prompts[1], "first", eos, 40), (prompts[0], None, eos)])
    stepper.allow(2)
    take(doomed, 3)

    doomed.cancel()
    assert list(doomed) == []
    stepper.allow()

    assert list(survivor) == expected
    assert forward_shapes[:3] == [(2, len(prompts[1])), (2, 1), (2, 1)]
    assert {rows for rows, _ in forward_shapes[3:]} == {1}


def test_a_seed_gives_the_same_sample_whatever_the_neighbours(batcher, prompts, eos):
    def sample(seed: int) -> TokenStream:
        return batcher.submit(prompts[1], "first", 12, temperature=1.0, top_p=0.9, seed=seed, eos_token_ids=set())

    alone = list(sample(seed=7))
    with_neighbours = batcher.run_between_steps(
        lambda: [greedy(batcher, prompts[0], "second", eos), sample(seed=7), greedy(batcher, prompts[2], None, eos)]
    )
    other_seed = list(sample(seed=8))

    assert list(with_neighbours[1]) == alone
    assert len(alone) == 12
    assert other_seed != alone


def test_a_row_ends_at_an_end_of_turn_token_included_or_at_max_new_tokens(batcher, prompts, reference):
    expected = reference(2, "second")
    end = expected[3]
    stopped, cut = submit_together(batcher, [(prompts[2], "second", {end}), (prompts[2], "second", set(), 4)])
    assert list(stopped) == expected[: expected.index(end) + 1]
    assert list(cut) == expected[:4]


def test_a_failing_forward_reaches_every_row_of_the_step(batcher, peft_model, prompts, eos, reference, monkeypatch):
    expected = reference(2, "second")
    model = peft_model.get_base_model()
    forward, calls = model.forward, []

    def fail_on_the_third_call(*args, **kwargs):
        calls.append(None)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", fail_on_the_third_call)
    streams = submit_together(batcher, [(prompts[0], "first", eos), (prompts[1], None, eos)])

    for stream in streams:
        with pytest.raises(RuntimeError, match="out of memory"):
            list(stream)
    assert list(greedy(batcher, prompts[2], "second", eos)) == expected  # and the batcher goes on


def test_an_unknown_adapter_fails_only_its_own_request(batcher, prompts, eos, reference):
    expected = reference(1, "second")
    unknown, known = submit_together(batcher, [(prompts[0], "missing", eos), (prompts[1], "second", eos)])
    with pytest.raises(ValueError, match="missing"):
        next(unknown)
    assert list(known) == expected


def test_a_model_without_adapters_batches_base_rows(make_model, prompts, eos):
    model = make_model()
    expected = [solo(model, prompt, None, eos) for prompt in prompts]
    batcher = ContinuousBatcher(lambda: model, "cpu")
    try:
        streams = submit_together(batcher, [(prompt, None, eos) for prompt in prompts])
        assert [list(stream) for stream in streams] == expected
    finally:
        batcher.close()
