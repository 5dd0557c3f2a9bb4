"""Continuous batching: every row of a mixed-adapter batch must generate what it would generate alone (with peft,
one request at a time, as the reference), also when prompts are prefilled in chunks."""

import itertools
import threading
from collections.abc import Iterator
from contextlib import nullcontext

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from app.ml.chat_format import render_prompt_ids
from app.serving.batching import ContinuousBatcher, TokenStream
from app.serving.errors import EngineError, GenerationFailed
from app.serving.lora_slots import AdapterSlots
from tests.helpers.waiting import eventually

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
def served(peft_model, make_model, tmp_path_factory) -> tuple[PreTrainedModel, AdapterSlots]:
    """A fresh copy of the tiny model with the two adapters, saved by peft, loaded into slots."""
    model = make_model().eval()
    slots = AdapterSlots(model, max_slots=4)
    for name in ADAPTERS:
        directory = tmp_path_factory.mktemp("adapters")
        peft_model.save_pretrained(directory, selected_adapters=[name])
        slots.load(name, next(directory.rglob("adapter_config.json")).parent)
    return model, slots


@pytest.fixture(scope="module")
def prompts(tokenizer: PreTrainedTokenizerFast) -> list[list[int]]:
    rendered = [render_prompt_ids(tokenizer, [{"role": "user", "content": question}]) for question in QUESTIONS]
    assert len({len(prompt) for prompt in rendered}) == len(rendered)  # different lengths, so rows are padded
    return rendered


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
    """Lets the decode thread run only the forward passes the test allows (a pre-hook on the model)."""

    def __init__(self) -> None:
        self._permits, self._changed = 0, threading.Condition()

    def __call__(self, *_: object) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._permits > 0)
            self._permits -= 1

    def allow(self, steps: int = 10**9) -> None:
        with self._changed:
            self._permits += steps
            self._changed.notify_all()


@pytest.fixture
def forward_shapes(served) -> Iterator[list[tuple[int, int]]]:
    """The shape of the input ids of every forward pass."""
    shapes: list[tuple[int, int]] = []
    hook = served[0].register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    yield shapes
    hook.remove()


def make_batcher(served, **options) -> ContinuousBatcher:
    model, slots = served
    return ContinuousBatcher(model, slots, "cpu", **({"max_batch_size": 8} | options))


@pytest.fixture
def batcher(served) -> Iterator[ContinuousBatcher]:
    batcher = make_batcher(served)
    yield batcher
    batcher.close()


@pytest.fixture
def stepper(served) -> Iterator[Stepper]:
    stepper = Stepper()
    hook = served[0].register_forward_pre_hook(stepper)
    yield stepper
    stepper.allow()
    hook.remove()


@pytest.fixture
def stepped_batcher(served, stepper) -> Iterator[ContinuousBatcher]:
    batcher = make_batcher(served)
    yield batcher
    stepper.allow()
    batcher.close()


def greedy(
    batcher: ContinuousBatcher,
    prompt: list[int],
    adapter: str | None,
    eos: set[int],
    n: int = 12,
    tenant: str | None = None,
) -> TokenStream:
    return batcher.submit(prompt, adapter, n, temperature=0, top_p=1, seed=None, eos_token_ids=eos, tenant=tenant)


def submit_together(batcher: ContinuousBatcher, requests: list[tuple]) -> list[TokenStream]:
    """Submit while no step runs, so that the next step prefills them all."""
    return batcher.run_between_steps(lambda: [greedy(batcher, *request) for request in requests])


def take(stream: TokenStream, n: int) -> list[int]:
    return [next(stream).id for _ in range(n)]


def ids(stream: TokenStream) -> list[int]:
    return [token.id for token in stream]


JOBS = [(0, "first"), (1, "second"), (2, None), (1, "first"), (0, None)]


@pytest.mark.parametrize(
    "max_prefill_tokens", [512, 16, 1], ids=["prefilled-together", "in-chunks", "one-token-per-step"]
)
def test_every_row_of_a_mixed_batch_generates_what_it_would_alone(served, prompts, eos, reference, max_prefill_tokens):
    expected = [reference(prompt, adapter) for prompt, adapter in JOBS]
    assert len({tuple(tokens) for tokens in expected}) == len(JOBS)  # adapters do change the replies
    batcher = make_batcher(served, max_prefill_tokens=max_prefill_tokens)
    try:
        streams = submit_together(batcher, [(prompts[prompt], adapter, eos) for prompt, adapter in JOBS])
        assert [ids(stream) for stream in streams] == expected
    finally:
        batcher.close()


def test_generations_longer_than_the_cache_buffers_grow_them(served, peft_model, prompts):
    never = {-1}  # no end-of-turn token: every row generates all 80 tokens, past the first buffers' free columns
    expected = [solo(peft_model, prompts[prompt], adapter, never, 80) for prompt, adapter in JOBS[:3]]
    batcher = make_batcher(served)
    try:
        streams = submit_together(batcher, [(prompts[prompt], adapter, never, 80) for prompt, adapter in JOBS[:3]])
        assert [ids(stream) for stream in streams] == expected
    finally:
        batcher.close()


def test_a_request_joins_the_running_batch(stepped_batcher, stepper, prompts, eos, reference, forward_shapes):
    expected = [reference(0, "first", 16), reference(1, "second", 16), reference(2, None)]
    first, second = submit_together(stepped_batcher, [(prompts[0], "first", eos, 16), (prompts[1], "second", eos, 16)])
    stepper.allow(3)  # a prefill and two decode steps: 3 tokens each
    started = take(first, 3)

    third = greedy(stepped_batcher, prompts[2], None, eos)
    stepper.allow()

    assert [started + ids(first), ids(second), ids(third)] == expected
    assert (3, 1) in forward_shapes  # a decode step ran the three rows together


def test_cancelled_stream_ends_and_its_row_leaves_the_batch(
    stepped_batcher, stepper, prompts, eos, reference, forward_shapes
):
    expected = reference(0, None)
    forward_shapes.clear()  # forget the reference's own forward passes
    doomed, survivor = submit_together(stepped_batcher, [(prompts[1], "first", eos, 40), (prompts[0], None, eos)])
    stepper.allow(3)  # a prefill and two decode steps
    take(doomed, 3)

    doomed.cancel()
    assert ids(doomed) == []
    stepper.allow()

    assert ids(survivor) == expected
    assert forward_shapes[:3] == [(2, len(prompts[1])), (2, 1), (2, 1)]
    later = [rows for rows, _ in forward_shapes[3:]]
    # The step that was waiting for a permit when the stream was cancelled may still hold both rows; no later one.
    assert set(later[1:]) == {1}


def test_a_seed_gives_the_same_sample_whatever_the_neighbours(batcher, prompts, eos):
    def sample(seed: int) -> TokenStream:
        return batcher.submit(prompts[1], "first", 12, temperature=1.0, top_p=0.9, seed=seed, eos_token_ids=set())

    alone = ids(sample(seed=7))
    with_neighbours = batcher.run_between_steps(
        lambda: [greedy(batcher, prompts[0], "second", eos), sample(seed=7), greedy(batcher, prompts[2], None, eos)]
    )
    other_seed = ids(sample(seed=8))

    assert ids(with_neighbours[1]) == alone
    assert len(alone) == 12
    assert other_seed != alone


def test_a_row_ends_at_an_end_of_turn_token_included_or_at_max_new_tokens(batcher, prompts, reference):
    expected = reference(2, "second")
    end = expected[3]
    stopped, cut = submit_together(batcher, [(prompts[2], "second", {end}), (prompts[2], "second", set(), 4)])
    assert ids(stopped) == expected[: expected.index(end) + 1]
    assert ids(cut) == expected[:4]


def test_a_failing_forward_reaches_every_row_of_the_step(batcher, served, prompts, eos, reference, monkeypatch):
    expected = reference(2, "second")
    model = served[0]
    forward, calls = model.forward, []

    def fail_on_the_third_call(*args, **kwargs):
        calls.append(None)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", fail_on_the_third_call)
    streams = submit_together(batcher, [(prompts[0], "first", eos), (prompts[1], None, eos)])

    for stream in streams:
        with pytest.raises(GenerationFailed, match="out of memory"):
            ids(stream)
    assert ids(greedy(batcher, prompts[2], "second", eos)) == expected  # and the batcher goes on


def test_an_unknown_adapter_fails_only_its_own_request(batcher, prompts, eos, reference):
    expected = reference(1, "second")
    unknown, known = submit_together(batcher, [(prompts[0], "missing", eos), (prompts[1], "second", eos)])
    with pytest.raises(ValueError, match="missing"):
        next(unknown)
    assert ids(known) == expected


def test_a_model_without_adapters_batches_base_rows(make_model, prompts, eos):
    model = make_model().eval()
    expected = [solo(model, prompt, None, eos) for prompt in prompts]
    batcher = ContinuousBatcher(model, AdapterSlots(model, max_slots=1), "cpu")
    try:
        streams = submit_together(batcher, [(prompt, None, eos) for prompt in prompts])
        assert [ids(stream) for stream in streams] == expected
    finally:
        batcher.close()


def test_running_rows_keep_decoding_while_a_long_prompt_is_prefilled_in_chunks(
    served, prompts, eos, reference, forward_shapes
):
    long_prompt = prompts[1]
    chunk = next(size for size in (4, 5, 6) if len(long_prompt) % size != 1)  # every chunk is longer than a decode
    chunks = -(-len(long_prompt) // chunk)
    assert chunks >= 3
    expected = [reference(0, "first", 40), reference(1, "second")]
    batcher = make_batcher(served, max_prefill_tokens=chunk)
    try:
        running = greedy(batcher, prompts[0], "first", eos, 40)
        started = take(running, 2)
        forward_shapes.clear()

        newcomer = greedy(batcher, long_prompt, "second", eos)

        assert [started + ids(running), ids(newcomer)] == expected
        prefill = [i for i, (_, columns) in enumerate(forward_shapes) if columns > 1]
        assert [forward_shapes[i] for i in prefill] == [
            (1, min(chunk, len(long_prompt) - start)) for start in range(0, len(long_prompt), chunk)
        ]
        between = [forward_shapes[i + 1 : j] for i, j in itertools.pairwise(prefill)]
        assert between == [[(1, 1)]] * (chunks - 1)  # the running row decodes one token after each chunk
    finally:
        batcher.close()


def test_log_probabilities_are_the_models_own_for_each_row_of_a_mixed_batch(served, peft_model, prompts, eos):
    """Sampled at temperature 1.3, each row's log-probabilities are still those of its own model (OpenAI's
    convention): the log-softmax of the logits peft computes for the prompt and the tokens generated so far."""
    batcher = make_batcher(served)
    jobs = [(0, "first"), (1, "second"), (2, None)]
    try:
        streams = batcher.run_between_steps(
            lambda: [
                batcher.submit(prompts[p], a, 6, temperature=1.3, top_p=1, seed=5, eos_token_ids=set(), logprobs=3)
                for p, a in jobs
            ]
        )
        generated = [list(stream) for stream in streams]
    finally:
        batcher.close()

    for (prompt, adapter), tokens in zip(jobs, generated, strict=True):
        sequence = torch.tensor([prompts[prompt] + [token.id for token in tokens]])
        with torch.inference_mode():
            logits = peft_model(input_ids=sequence, adapter_names=[adapter or "__base__"]).logits[0]
        expected = torch.log_softmax(logits[len(prompts[prompt]) - 1 : -1].float(), dim=-1)
        for position, token in enumerate(tokens):
            assert token.logprob == pytest.approx(float(expected[position, token.id]), abs=1e-4)
            best = expected[position].topk(3)
            assert [alternative for alternative, _ in token.top_logprobs] == best.indices.tolist()
            assert [value for _, value in token.top_logprobs] == pytest.approx(best.values.tolist(), abs=1e-4)


@pytest.fixture
def recorded(served) -> Iterator[list[tuple[int, int, int, bool]]]:
    """Every forward pass as (rows, input columns, attention mask width, holds the token `FILLER`)."""
    passes: list[tuple[int, int, int, bool]] = []

    def record(module, args, kwargs) -> None:
        input_ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        passes.append((*input_ids.shape, mask.shape[1], bool((input_ids == FILLER).any())))

    hook = served[0].register_forward_pre_hook(record, with_kwargs=True)
    yield passes
    hook.remove()


FILLER = 42  # the one token of the long prompts below, found in none of `prompts`


def test_a_long_prompt_cancelled_after_its_first_chunk_is_prefilled_no_further(
    served, stepper, recorded, prompts, eos, reference
):
    assert not any(FILLER in prompt for prompt in prompts)
    batcher = make_batcher(served, max_prefill_tokens=16)
    try:
        doomed = greedy(batcher, [FILLER] * 320, "first", eos)  # 20 chunks
        stepper.allow(1)
        eventually(lambda: len(recorded) == 1, what="the first chunk")

        doomed.cancel()
        small = greedy(batcher, prompts[0], None, eos)
        stepper.allow()

        assert ids(small) == reference(0, None)
        # The chunk that was waiting for its permit when the client left may run; no later one.
        assert sum(filler for *_, filler in recorded) <= 2
    finally:
        batcher.close()


def test_a_long_prefill_stops_at_the_request_deadline(served, stepper, recorded, eos):
    batcher = make_batcher(served, max_prefill_tokens=16, request_timeout_s=60)
    now = [0.0]
    batcher._clock = lambda: now[0]
    try:
        late = greedy(batcher, [FILLER] * 320, None, eos)
        stepper.allow(1)
        eventually(lambda: len(recorded) == 1, what="the first chunk")

        now[0] = 61.0
        stepper.allow()

        with pytest.raises(EngineError, match="time limit of 60 s"):
            ids(late)
        assert sum(filler for *_, filler in recorded) <= 2
    finally:
        batcher.close()


def test_short_requests_finish_beside_a_long_prefill_and_are_not_padded_to_its_width(
    served, stepper, recorded, prompts, eos, reference
):
    long_prompt = [FILLER] * 400  # 10 chunks of 40
    expected = [reference(0, "first", 4), reference(1, "second", 4), reference(2, None, 4)]
    batcher = make_batcher(served, max_prefill_tokens=40)
    try:
        long = greedy(batcher, long_prompt, "first", eos, 3)
        stepper.allow(1)
        eventually(lambda: len(recorded) == 1, what="the first chunk")

        shorts = [greedy(batcher, prompts[i], adapter, eos, 4) for i, adapter in enumerate(["first", "second", None])]
        stepper.allow()

        assert [ids(short) for short in shorts] == expected
        assert len(ids(long)) == 3
        last_long_chunk = recorded.index((1, 400 % 40 or 40, len(long_prompt), True))
        short_decodes = [i for i, (_, columns, width, _) in enumerate(recorded) if columns == 1 and width < 400]
        assert max(short_decodes) < last_long_chunk  # the short requests were done before the long one began
        wide_decodes = [rows for rows, columns, width, _ in recorded if columns == 1 and width >= 400]
        assert wide_decodes and set(wide_decodes) == {1}  # no short row is padded to the long prompt's width
    finally:
        batcher.close()


def test_a_row_that_expires_as_its_prefill_starts_leaves_its_neighbours_generating_as_alone(
    served, prompts, eos, reference
):
    batcher = make_batcher(served, request_timeout_s=60)
    now = [0.0]
    batcher._clock = lambda: now[0]
    try:

        def submit() -> tuple[TokenStream, TokenStream]:
            late = greedy(batcher, prompts[1], "first", eos)  # the longer prompt: the survivor's is re-laid out
            now[0] = 30.0
            survivor = greedy(batcher, prompts[0], "second", eos)
            now[0] = 61.0  # past the first request's deadline only
            return late, survivor

        late, survivor = batcher.run_between_steps(submit)

        with pytest.raises(EngineError, match="time limit"):
            ids(late)
        assert ids(survivor) == reference(0, "second")
    finally:
        batcher.close()


def test_while_organisations_share_the_batch_each_starts_at_most_its_rows(served, prompts, eos, reference, stepper):
    """Another organisation's `n=4` must not set a chat's pace: while both have rows, its rows start one at a time,
    and every one of them still generates what it would alone."""
    shared = make_batcher(served, rows_per_tenant_when_shared=1)
    rows_per_step: list[int] = []
    hook = served[0].register_forward_pre_hook(
        lambda module, args, kwargs: rows_per_step.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        chat = shared.submit(prompts[0], None, 24, temperature=0, top_p=1, seed=None, eos_token_ids=eos, tenant="b")
        stepper.allow(1)  # its prefill only: the chat still runs when the other organisation's rows arrive
        next(chat)
        wide = [
            shared.submit(prompts[1], None, 12, temperature=0, top_p=1, seed=None, eos_token_ids=eos, tenant="a")
            for _ in range(4)
        ]
        stepper.allow()
        chat_ids = ids(chat)
        assert max(rows_per_step) == 2  # the chat's row and one of the other organisation's
        assert [ids(stream) for stream in wide] == [reference(1, None)] * 4
        assert len(chat_ids) + 1 == len(reference(0, None, 24))
    finally:
        hook.remove()
        shared.close()


def test_an_organisation_alone_uses_the_whole_batch(served, prompts, eos, forward_shapes):
    alone = make_batcher(served, rows_per_tenant_when_shared=1)
    try:
        for stream in submit_together(alone, [(prompts[1], None, eos, 4, "a")] * 4):
            ids(stream)
    finally:
        alone.close()
    assert forward_shapes[0][0] == 4


def test_a_request_handed_over_while_the_batch_is_busy_joins_at_the_next_step(served, prompts, eos, reference):
    """A chat submitted (through `run_between_steps`, as the engine does) beside another request's long generation
    must start at the next step: the decode thread must not keep the model to itself step after step."""
    batcher = make_batcher(served)
    steps = [0]
    hook = served[0].register_forward_pre_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
    try:
        long = batcher.submit(prompts[1], None, 300, temperature=0, top_p=1, seed=None, eos_token_ids=set())
        next(long)
        waits = []
        for _ in range(5):
            before = steps[0]
            taken_at, chat = batcher.run_between_steps(lambda: (steps[0], greedy(batcher, prompts[0], None, eos)))
            waits.append(taken_at - before)
            assert ids(chat) == reference(0, None)
        long.cancel()
    finally:
        hook.remove()
        batcher.close()
    assert max(waits) <= 1  # at most the forward pass running when it was handed over


def test_an_organisation_whose_row_just_finished_still_shares_the_batch(served, prompts, eos, forward_shapes, stepper):
    """The window in which an organisation counts as sharing runs from its last row running, not from its last
    submission: a chat that took longer than the window must not let another's `n=4` take every row in the
    moment before its next chat."""
    shared = make_batcher(served, rows_per_tenant_when_shared=1)
    now = [0.0]
    shared._clock = lambda: now[0]
    try:
        chat = greedy(shared, prompts[0], None, set(), n=8, tenant="b")
        stepper.allow(1)  # the prefill only: the chat's row must still be running when the clock moves
        next(chat)
        now[0] = 10.0  # the chat's row runs on until t=10, long past its submission
        stepper.allow()
        ids(chat)
        now[0] = 11.0
        before = len(forward_shapes)
        for stream in submit_together(shared, [(prompts[1], None, eos, 4, "a")] * 4):
            ids(stream)
    finally:
        shared.close()
    assert max(rows for rows, _ in forward_shapes[before:]) == 1


def test_a_decode_thread_that_breaks_leaves_no_caller_waiting(served, prompts, eos):
    """A bug that breaks the decode loop must fail the requests it held and refuse new ones, not leave callers of
    `run_between_steps` or readers waiting for ever (`InferenceEngine` then starts another batcher)."""
    batcher = make_batcher(served)
    inside, broken = threading.Event(), threading.Event()

    def take_waiting(one_chunk_only: bool) -> list:
        inside.set()
        broken.wait()
        raise AssertionError("a bug in the decode loop")

    batcher._take_waiting = take_waiting  # type: ignore[method-assign]
    try:
        held = greedy(batcher, prompts[0], None, eos)
        # past `_run_between` for this step: an action handed over earlier would run at once, not wait for the bug
        assert inside.wait(timeout=60)
        handed: list[object] = []
        hander = threading.Thread(target=lambda: handed.append(batcher.run_between_steps(lambda: "ran")), daemon=True)
        hander.start()
        eventually(lambda: batcher._between)  # handed over while the loop still runs
        broken.set()
        hander.join(timeout=10)
        ended: list[BaseException] = []

        def read_held() -> None:
            try:
                ids(held)
            except GenerationFailed as error:
                ended.append(error)

        reader = threading.Thread(target=read_held, daemon=True)
        reader.start()
        reader.join(timeout=10)
        assert handed == ["ran"]
        assert [type(error.__cause__) for error in ended] == [AssertionError]
        assert "a bug in the decode loop" in str(ended[0])
        with pytest.raises(GenerationFailed, match="not generating any more"):
            greedy(batcher, prompts[1], None, eos)
    finally:
        batcher.close()
