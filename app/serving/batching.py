"""Continuous batching: requests for different LoRA adapters (or none) decoded together, one token per step.

One background thread owns the running rows. Between two decode steps it drops finished and cancelled rows,
prefills waiting rows and merges them in, so a request never waits for another to finish.

Design:
- KV cache. The batch keeps one `DynamicCache`, LEFT-padded: every row is `[padding..., real tokens...]`, with a
  2D attention mask (0 on padding) and per-row positions (a row's next position is its count of real tokens), so
  padding changes neither positions nor attention and each row computes what it would compute alone. Newcomers are
  prefilled together in their own left-padded cache; the shorter of the two caches is then left-padded with zeros
  to the other's length and both are concatenated along the batch dimension. Leaving rows are removed with an
  index-select, and the leading columns that became padding in every remaining row are cut off. Sliding-window
  layers (Mistral, Gemma 2 and 3) keep every column as full layers do, and the model's mask applies the window: it
  counts columns, and within a left-padded row columns are positions (`kv_cache.new_cache`). Each layer keeps its
  keys and values in a buffer with room to grow (`GrowingLayer`): a decode step writes one column in place instead
  of copying the whole cache, as `DynamicLayer`'s concatenation does (with 16 rows of 400 tokens, a decode step
  took 162-175 ms instead of 215-231 ms). A row leaving copies the others once, straight into new buffers (one of
  32 rows of 80 tokens leaving, and the next append, over 30 layers: 19 ms instead of 44 ms).
- Mixed adapters. Rows use their own adapters (or none) through `AdapterSlots.routed`, our grouped LoRA
  computation (`lora_slots.py`): the cost of a step hardly depends on how many distinct adapters the batch holds.
- Chunked prefill. Newcomers are prefilled together, at most `max_prefill_tokens` padded prompt tokens per step:
  as many rows as fit (at least one), and a prompt longer than that in chunks of columns over several steps, each
  followed by a decode step of the running rows, so a long prompt never stalls the others for long. While such a
  prompt is prefilled, prompts that fit in one chunk are prefilled beside it (a second chunk in the same step) and
  start decoding: short requests queued behind a long one do not wait for it. A row cancelled (its client left) or
  past its deadline leaves before the next chunk, so an abandoned long prompt stops being prefilled at once.
- Decode groups. Prefilled rows join the decode group (its own cache) where they add the least padding, if the
  padding stays bounded (no more cells than real tokens, or widths within `_MERGE_SLACK_COLUMNS`); otherwise they
  form a group of their own, decoded in its own forward pass of the same step. One long prompt therefore never pads
  the other rows to its width: with one 4,000-token prompt among 16 short rows, 92% of the decode steps' attention
  cells were padding, and 0.3% now; the short rows that came during its prefill got their first token after 0.4 s
  instead of 5.5 s (`bench/padding_share.py`, tiny model on CPU).
- Tenants share the batch. On a CPU every row added to a step slows the step for every row in it, so while more than
  one tenant (organisation) has rows, each starts at most `rows_per_tenant_when_shared` at a time; alone, a tenant
  uses the whole batch. B's 8-token chat beside A's `n=8` of 64 tokens (SmolLM2-135M, one thread): p50/max 2.0x/3.3x
  its time alone without the cap, 1.55x/1.6x with one row each.
- Sampling is per row, on float32 logits: greedy at temperature 0, else temperature and top-p (no top-k) with a
  `torch.Generator` of the row's own, so a seed gives the same tokens whatever else shares the batch. Rows that ask
  for log-probabilities get them from the same logits (a log-softmax of the row, and its top k).
- The owner submits, and loads or unloads adapters, inside `run_between_steps`: the decode thread runs the action
  itself before its next step, so no forward pass overlaps it and it never waits more than one step. (A lock
  shared with the decode thread starved the caller while the batch was busy: the thread took it back the moment it
  let it go, and a chat beside another organisation's running rows waited 0.3-2 s to be submitted.) Unloading an
  adapter that `adapters_in_use()` reports breaks the rows using it; they get the error.
- Failures reach every request they break, at once, as a `GenerationFailed` that names the model (an `EngineError`
  stays as it is; the traceback goes to the log), and the batcher goes on with the next requests: a cache that
  cannot be built fails its newcomers, a prefill chunk its own rows, a decode step or its sampling every row of the
  step. A failure of the loop itself leaves the batch in an unknown state, so it closes the batcher: the rows it held
  and the waiting ones get the error, later submissions are refused, and `InferenceEngine` starts a new batcher.
"""

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel

from app.core.metrics import (
    DECODE_STEP_ROWS,
    GENERATED_TOKENS,
    GENERATION_SLOTS_IN_USE,
    GENERATION_TOKENS_PER_SECOND,
    TIME_TO_FIRST_TOKEN,
)
from app.serving.backend import GeneratedToken, QueuedTokenStream
from app.serving.errors import EngineError, GenerationFailed
from app.serving.kv_cache import growing_layers, left_pad, new_cache
from app.serving.lora_slots import AdapterSlots

log = structlog.get_logger()
T = TypeVar("T")
# Rows whose widths differ by this much share a decode batch whatever the padding share: one forward pass for a
# few columns of padding costs less than one more pass.
_MERGE_SLACK_COLUMNS = 32


class TokenStream(QueuedTokenStream):
    """The tokens of one request, as they are generated; an end-of-turn token, if any, is the last item.

    Iterating blocks until the next token. An error of the decode thread is raised here, once.
    """

    def __init__(self, on_cancel: Callable[[], None]) -> None:
        super().__init__()
        self._cancelled = threading.Event()
        self._on_cancel = on_cancel

    def cancel(self) -> None:
        """Stop generating: the stream ends now and its row leaves the batch before the next step."""
        self._cancelled.set()
        self._end()
        self._on_cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _expire(self, error: BaseException) -> None:
        """The request ran past its deadline: the reader gets `error`, and the row leaves like a cancelled one."""
        self._cancelled.set()
        self._fail(error)


_SHARED_WINDOW_S = 2.0


@dataclass(eq=False)  # rows are compared and hashed by identity
class _Row:
    prompt_ids: list[int]
    adapter: str | None
    max_new_tokens: int
    temperature: float
    top_p: float
    generator: torch.Generator | None  # None: greedy
    eos_token_ids: frozenset[int]
    logprobs: int | None  # None: none; k: the token's log-probability and the k most likely alternatives
    stream: TokenStream
    tenant: str | None = None  # whose request: rows of one tenant are capped while another's share the batch
    deadline: float | None = None  # on the batcher's clock; a row still running then fails
    length: int = 0  # real tokens in the cache, which is also the position of the next one
    generated: int = 0
    next_token: int = -1  # sampled and streamed, not yet in the cache
    submitted_at: float = field(default_factory=time.perf_counter)  # for the metrics only, not the batcher's clock
    first_token_at: float = 0.0

    def accept(self, token: GeneratedToken) -> bool:
        """Stream a newly sampled token; True when the row is done."""
        self.next_token, self.generated = token.id, self.generated + 1
        self.stream._put(token)
        if self.generated == 1:
            self.first_token_at = time.perf_counter()
            TIME_TO_FIRST_TOKEN.observe(self.first_token_at - self.submitted_at)
        done = token.id in self.eos_token_ids or self.generated >= self.max_new_tokens
        if done:
            self.stream._end()
            if self.generated > 1 and (elapsed := time.perf_counter() - self.first_token_at) > 0:
                GENERATION_TOKENS_PER_SECOND.observe((self.generated - 1) / elapsed)
        return done


@dataclass
class _Prefill:
    """Newcomers being prefilled together, `chunk` columns of their left-padded prompts per step."""

    rows: list[_Row]
    input_ids: torch.Tensor  # [rows, columns]
    mask: torch.Tensor  # [rows, columns], 1 on real tokens
    cache: DynamicCache
    chunk: int
    done: int = 0  # columns already in the cache

    def keep(self, indices: list[int], fresh_cache: Callable[[], DynamicCache]) -> None:
        """Keep only these rows, without the leading columns that are padding in all of them, and prefill them
        from the start again. Rows leave a prefill before its first chunk only: a prompt that takes several
        chunks is prefilled alone, so nothing computed is lost."""
        rows = [self.rows[i] for i in indices]
        index = torch.tensor(indices, device=self.mask.device)
        start = self.mask.shape[1] - max(len(row.prompt_ids) for row in rows)
        self.input_ids, self.mask = self.input_ids[index, start:], self.mask[index, start:]
        self.rows, self.cache, self.done = rows, fresh_cache(), 0


@dataclass
class _Batch:
    rows: list[_Row]
    cache: DynamicCache
    mask: torch.Tensor  # [rows, columns], 1 on real tokens; every row is left-padded

    def merge(self, other: "_Batch") -> None:
        """Append the rows of `other`, left-padding whichever cache is shorter."""
        columns = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(growing_layers(self.cache), growing_layers(other.cache), strict=True):
            mine.append_rows(theirs, columns)
        self.mask = torch.cat([left_pad(self.mask, columns, -1), left_pad(other.mask, columns, -1)])
        self.rows = self.rows + other.rows  # a new list: a step keeps the one it started with

    def merged_padding(self, other: "_Batch") -> tuple[int, bool]:
        """The padding cells the two batches would hold merged, and whether that waste stays bounded: padding at
        most as many cells as real tokens, or rows of nearly the same width (`_MERGE_SLACK_COLUMNS`)."""
        mine, theirs = self.mask.shape[1], other.mask.shape[1]
        real = sum(row.length for row in self.rows) + sum(row.length for row in other.rows)
        padding = (len(self.rows) + len(other.rows)) * max(mine, theirs) - real
        return padding, padding <= real or abs(mine - theirs) <= _MERGE_SLACK_COLUMNS

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows, and cut off the columns that are padding in all of them."""
        if len(indices) == len(self.rows):
            return
        index = torch.tensor(indices, device=self.mask.device)
        mask = self.mask[index]
        start = mask.shape[1] - int(mask.sum(dim=1).max())
        for layer in growing_layers(self.cache):
            layer.keep_rows(index, start)
        self.mask = mask[:, start:]
        self.rows = [self.rows[i] for i in indices]


def _next_tokens(rows: list[_Row], logits: torch.Tensor) -> list[GeneratedToken]:
    logits = logits.float()
    greedy = logits.argmax(dim=-1).tolist()
    chosen = [
        greedy[i] if row.generator is None else _sample(logits[i], row.temperature, row.top_p, row.generator)
        for i, row in enumerate(rows)
    ]
    return [
        GeneratedToken(token) if row.logprobs is None else _scored(logits[i], token, row.logprobs)
        for i, (row, token) in enumerate(zip(rows, chosen, strict=True))
    ]


def _scored(logits: torch.Tensor, token: int, top: int) -> GeneratedToken:
    logprobs = torch.log_softmax(logits, dim=-1)
    best = logprobs.topk(top) if top else None
    alternatives = tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if best is not None else ()
    return GeneratedToken(token, float(logprobs[token]), alternatives)


def _settle(future: "Future[T]", action: Callable[[], T]) -> None:
    try:
        future.set_result(action())
    except BaseException as error:  # the caller of `run_between_steps` gets it, as if it had run the action itself
        future.set_exception(error)


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(dim=0) - sorted_probs >= top_p  # the tokens before already hold top_p
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs.masked_fill(outside, 0))
    return int(torch.multinomial(probs, 1, generator=generator))


class ContinuousBatcher:
    """Generates for many requests at once on one model, whatever adapter each uses."""

    def __init__(
        self,
        model: PreTrainedModel,
        adapters: AdapterSlots,
        device: torch.device | str,
        max_batch_size: int = 16,
        max_prefill_tokens: int = 512,
        request_timeout_s: float | None = None,
        rows_per_tenant_when_shared: int | None = None,
        model_name: str | None = None,
    ) -> None:
        """`rows_per_tenant_when_shared`: while more than one tenant has rows running or waiting, or submitted
        within `_SHARED_WINDOW_S`, a tenant's waiting rows start only while it has fewer running (None: no cap).
        `model_name`: the model the errors of failed requests name."""
        if max_batch_size < 1 or max_prefill_tokens < 1:
            raise ValueError("max_batch_size and max_prefill_tokens must be at least 1")
        self._model = model
        self._adapters = adapters
        self._device = torch.device(device)
        self._max_batch_size = max_batch_size
        self._max_prefill_tokens = max_prefill_tokens
        self._request_timeout_s = request_timeout_s
        self._rows_per_tenant = rows_per_tenant_when_shared
        self._model_name = model_name
        self._last_seen: dict[str | None, float] = {}  # per tenant, its last row submitted or running
        self._clock: Callable[[], float] = time.monotonic
        self._waiting: deque[_Row] = deque()
        # Only the decode thread changes these (`run_between_steps`' actions run on it too).
        self._batches: list[_Batch] = []  # decode groups of rows of similar widths
        self._prefills: list[_Prefill] = []  # at most one that takes several steps, then short ones of one step
        self._wakeup = threading.Condition()
        self._model_lock = threading.Lock()  # held by every step, and by `run_between_steps` without a decode thread
        self._between: deque[Callable[[], None]] = deque()  # `run_between_steps`' actions for the decode thread
        self._thread: threading.Thread | None = None
        self._closed = False
        self._slots_in_use = GENERATION_SLOTS_IN_USE.labels(model_name or "")

    def submit(
        self,
        prompt_ids: list[int],
        adapter: str | None,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        eos_token_ids: set[int],
        logprobs: int | None = None,
        tenant: str | None = None,
    ) -> TokenStream:
        """Queue a request; `adapter` is a name loaded in the slots (None: the base model), temperature 0 is greedy,
        `logprobs` as in `SamplingParams`, `tenant` whose request it is (an organisation)."""
        if not prompt_ids or max_new_tokens < 1:
            raise ValueError("a request needs a prompt and max_new_tokens of at least 1")
        stream = TokenStream(on_cancel=self._notify)
        timeout = self._request_timeout_s
        row = _Row(
            prompt_ids, adapter, max_new_tokens, temperature, top_p, self._generator(temperature, seed),
            frozenset(eos_token_ids), logprobs, stream, tenant, None if timeout is None else self._clock() + timeout,
        )  # fmt: skip
        with self._wakeup:
            if self._closed:
                raise GenerationFailed.stopped(self._model_name)
            self._waiting.append(row)
            self._last_seen[tenant] = self._clock()
            self._start()
            self._wakeup.notify()
        return stream

    def run_between_steps(self, action: Callable[[], T]) -> T:
        """Run `action` (submit, load or unload adapters) while no forward pass runs: on the decode thread, before
        its next step; `action`'s exception is raised here."""
        with self._wakeup:
            posted = self._thread is not None and not self._closed
            if posted:
                handed: Future[T] = Future()
                self._between.append(lambda: _settle(handed, action))
                self._wakeup.notify()
        if posted:
            return handed.result()
        with self._model_lock:  # no decode thread runs (yet, or any more)
            return action()

    def adapters_in_use(self) -> set[str]:
        """Adapters of running or waiting requests; consistent when called inside `run_between_steps`."""
        with self._wakeup:
            rows = [*self._running_rows(), *self._waiting]
        return {row.adapter for row in rows if row.adapter is not None and not row.stream.cancelled}

    @property
    def closed(self) -> bool:
        """Closed, or its decode loop broke: it refuses requests (`InferenceEngine` then starts another)."""
        return self._closed

    def close(self) -> None:
        """Stop the decode thread; requests still running or waiting get an error."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join()

    def _generator(self, temperature: float, seed: int | None) -> torch.Generator | None:
        if temperature == 0:
            return None
        generator = torch.Generator(device=self._device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        return generator

    def _notify(self) -> None:
        with self._wakeup:
            self._wakeup.notify()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="continuous-batcher", daemon=True)
            self._thread.start()

    def _running_rows(self) -> list[_Row]:
        batches, prefills = self._batches, self._prefills
        return [row for batch in batches for row in batch.rows] + [row for prefill in prefills for row in prefill.rows]

    def _run(self) -> None:
        ending: EngineError = GenerationFailed.stopped(self._model_name)
        try:
            while self._wait_for_work():
                with self._model_lock:
                    self._run_between()
                    with torch.inference_mode():
                        # A prefill in progress takes the long prompts one at a time; prompts that fit in one chunk are
                        # prefilled beside it, so a long prompt never holds back the short ones queued behind it.
                        self._start_prefill(self._take_waiting(one_chunk_only=bool(self._prefills)))
                        rows = self._running_rows()
                        try:
                            self._step()
                        except Exception as error:  # the batch may be half-updated: every row of the step fails
                            self._batches, self._prefills = [], []
                            self._fail(rows, error)
        except Exception as error:  # a bug broke the loop: what it held is unknown, so this batcher ends here
            ending = self._failure(error)
        finally:  # closed, or the loop broke: no caller may be left waiting for this thread
            with self._wakeup:
                self._closed = True
            with self._model_lock:
                self._run_between()  # handed over before: they still run (a submit among them is refused)
            self._fail_all(ending)

    def _run_between(self) -> None:
        while True:
            with self._wakeup:
                if not self._between:
                    return
                action = self._between.popleft()
            action()

    def _step(self) -> None:
        """Drop rows that were cancelled or ran out of time, prefill one chunk of each prefill in progress (a row
        cancelled while its long prompt is prefilled leaves before the next chunk), then decode every group."""
        self._expire_overdue()
        self._drop(lambda row: row.stream.cancelled)
        for prefill in list(self._prefills):
            self._prefill_chunk(prefill)
        for batch in list(self._batches):
            if batch in self._batches:  # not merged into another group by a row leaving earlier in this step
                self._decode(batch)
        self._slots_in_use.set(
            sum(len(batch.rows) for batch in self._batches) + sum(len(p.rows) for p in self._prefills)
        )

    def _wait_for_work(self) -> bool:
        with self._wakeup:
            while not (self._closed or self._between or self._waiting or self._batches or self._prefills):
                self._wakeup.wait()
            return not self._closed

    def _take_waiting(self, one_chunk_only: bool) -> list[_Row]:
        """The waiting rows to prefill now: as many as fit in the batch and in the prefill budget, at least one
        unless `one_chunk_only`, which leaves the prompts that take several chunks waiting, in order. While more
        than one tenant has rows, a tenant at its cap of running rows waits (`rows_per_tenant_when_shared`): every
        row in a step makes the step slower for all, so one tenant's `n=8` must not set everyone's pace."""
        running = self._running_rows()
        room = self._max_batch_size - len(running)
        taken: list[_Row] = []
        with self._wakeup:
            held = Counter(row.tenant for row in running)
            now = self._clock()
            self._last_seen.update(dict.fromkeys(held, now))
            shared = len({*held, *(row.tenant for row in self._waiting), *self._recent_tenants(now)}) > 1
            skipped: list[_Row] = []
            while self._waiting and len(taken) < room:
                row = self._waiting.popleft()
                if row.stream.cancelled:
                    continue
                if shared and self._rows_per_tenant is not None and held[row.tenant] >= self._rows_per_tenant:
                    skipped.append(row)
                    continue
                longest = max([len(row.prompt_ids), *(len(r.prompt_ids) for r in taken)])
                if longest * (len(taken) + 1) <= self._max_prefill_tokens or not (taken or one_chunk_only):
                    taken.append(row)
                    held[row.tenant] += 1
                elif one_chunk_only and len(row.prompt_ids) > self._max_prefill_tokens:
                    skipped.append(row)
                else:
                    self._waiting.appendleft(row)
                    break
            self._waiting.extendleft(reversed(skipped))
        return taken

    def _recent_tenants(self, now: float) -> list[str | None]:
        """Tenants with a row submitted or running within `_SHARED_WINDOW_S`: one sending chats one after another
        shares the batch even in the moment between two of them (older entries are forgotten here)."""
        for tenant in [tenant for tenant, at in self._last_seen.items() if at < now - _SHARED_WINDOW_S]:
            del self._last_seen[tenant]
        return list(self._last_seen)

    def _forward(self, rows: list[_Row], decoding: bool, **inputs: Any) -> torch.Tensor:
        """Last-position logits, each row through its own adapter (the largest group's stay staged)."""
        with self._adapters.routed([row.adapter for row in rows], staged=decoding):
            logits: torch.Tensor = self._model(**inputs, use_cache=True, logits_to_keep=1).logits
            return logits[:, -1]

    def _start_prefill(self, rows: list[_Row]) -> None:
        """Lay the newcomers out left-padded; `_prefill_chunk` feeds them to the model over the next steps. A
        failure (a cache this model's layers cannot use) fails the newcomers only: the running rows go on."""
        for row in rows:
            if row.adapter is not None and row.adapter not in self._adapters:
                row.stream._fail(ValueError(f"adapter {row.adapter!r} is not loaded"))
        rows = [row for row in rows if row.adapter is None or row.adapter in self._adapters]
        if not rows:
            return
        try:
            prefill = self._laid_out(rows)
        except Exception as error:
            self._fail(rows, error)
            return
        self._prefills.append(prefill)

    def _laid_out(self, rows: list[_Row]) -> _Prefill:
        columns = max(len(row.prompt_ids) for row in rows)
        input_ids = torch.zeros((len(rows), columns), dtype=torch.long)
        mask = torch.zeros((len(rows), columns), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, columns - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            mask[i, columns - len(row.prompt_ids) :] = 1
            row.length = len(row.prompt_ids)
        chunk = max(1, self._max_prefill_tokens // len(rows))
        cache = new_cache(self._model.config)
        return _Prefill(rows, input_ids.to(self._device), mask.to(self._device), cache, chunk)

    def _prefill_chunk(self, prefill: _Prefill) -> None:
        """Feed the next chunk of the newcomers' prompts; after the last one, stream their first tokens and add the
        unfinished ones to a decode group. A failure fails the newcomers only: the running rows are untouched."""
        end = min(prefill.done + prefill.chunk, prefill.input_ids.shape[1])
        mask = prefill.mask[:, :end]
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, prefill.done :]
        try:
            logits = self._forward(
                prefill.rows, decoding=False, input_ids=prefill.input_ids[:, prefill.done : end], attention_mask=mask,
                position_ids=positions, cache=prefill.cache,
            )  # fmt: skip
        except Exception as error:
            self._prefills.remove(prefill)
            self._fail(prefill.rows, error)
            return
        prefill.done = end
        if end < prefill.input_ids.shape[1]:
            return
        self._prefills.remove(prefill)
        self._join(_Batch(prefill.rows, prefill.cache, prefill.mask))
        self._accept(prefill.rows, logits)

    def _join(self, newcomers: _Batch) -> None:
        """Merge the newcomers into the decode group where they add the least padding, if that stays bounded, else
        start a group of their own: a long prompt never pads the other rows to its width."""
        fits = [(padding, batch) for batch in self._batches for padding, bounded in [batch.merged_padding(newcomers)]
                if bounded]  # fmt: skip
        if fits:
            min(fits, key=lambda fit: fit[0])[1].merge(newcomers)
        else:
            self._batches.append(newcomers)

    def _regroup(self) -> None:
        """Merge decode groups whose widths came close (a long row left): fewer forward passes per step."""
        for batch in list(self._batches):
            for other in self._batches:
                if other is not batch and batch in self._batches and other.merged_padding(batch)[1]:
                    other.merge(batch)
                    self._batches.remove(batch)
                    break

    def _decode(self, batch: _Batch) -> None:
        """Feed every row of the group its last sampled token and sample the next."""
        rows = batch.rows
        input_ids = torch.tensor([[row.next_token] for row in rows], device=self._device)
        positions = torch.tensor([[row.length] for row in rows], device=self._device)
        mask = F.pad(batch.mask, (0, 1), value=1)
        # The staged adapter stack serves one group: the largest. The others gather their adapters per step.
        staged = batch is max(self._batches, key=lambda group: len(group.rows))
        logits = self._forward(
            rows, decoding=staged, input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=batch.cache
        )
        batch.mask = mask
        for row in rows:
            row.length += 1
        DECODE_STEP_ROWS.observe(len(rows))
        self._accept(rows, logits)

    def _accept(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Sample a token for each row and drop the rows that are done."""
        done = set()
        GENERATED_TOKENS.inc(len(rows))
        for row, token in zip(rows, _next_tokens(rows, logits), strict=True):
            if row.accept(token):
                done.add(row)
        if done:
            self._drop(lambda row: row in done)

    def _expire_overdue(self) -> None:
        """Fail the rows past their deadline (the client's own timeout has given up on them)."""
        now = self._clock()
        with self._wakeup:
            waiting = list(self._waiting)
        for row in [*self._running_rows(), *waiting]:
            if row.deadline is not None and now >= row.deadline and not row.stream.cancelled:
                row.stream._expire(
                    EngineError(f"The generation ran past its time limit of {self._request_timeout_s:g} s")
                )

    def _drop(self, leaves: Callable[[_Row], bool]) -> None:
        for prefill in list(self._prefills):
            kept = [i for i, row in enumerate(prefill.rows) if not leaves(row)]
            if not kept:
                self._prefills.remove(prefill)
            elif len(kept) < len(prefill.rows):
                prefill.keep(kept, lambda: new_cache(self._model.config))
        for batch in list(self._batches):
            kept = [i for i, row in enumerate(batch.rows) if not leaves(row)]
            if kept:
                batch.keep(kept)
            else:
                self._batches.remove(batch)
        if len(self._batches) > 1:
            self._regroup()

    def _fail(self, rows: list[_Row], error: Exception) -> None:
        failure = self._failure(error)
        for row in rows:
            row.stream._fail(failure)

    def _failure(self, error: Exception) -> EngineError:
        """What the readers of the rows `error` broke get: an engine error as it is, else one naming the model (the
        traceback goes to the log)."""
        if isinstance(error, EngineError):
            return error
        log.error("inference.generation_failed", model=self._model_name, exc_info=error)
        return GenerationFailed.of(self._model_name, error)

    def _fail_all(self, error: BaseException) -> None:
        with self._wakeup:
            rows = [*self._running_rows(), *self._waiting]
            self._batches, self._prefills, self._waiting = [], [], deque()
        self._slots_in_use.set(0)
        for row in rows:
            row.stream._fail(error)
