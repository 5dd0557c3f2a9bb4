"""Continuous batching: requests for different LoRA adapters (or none) decoded together, one token per step.

One background thread owns the running batch. Between two decode steps it drops finished and cancelled rows,
prefills waiting rows and merges them in, so a request never waits for another to finish.

Design:
- KV cache. The batch keeps one `DynamicCache`, LEFT-padded: every row is `[padding..., real tokens...]`, with a
  2D attention mask (0 on padding) and per-row positions (a row's next position is its count of real tokens), so
  padding changes neither positions nor attention and each row computes what it would compute alone. Newcomers are
  prefilled together in their own left-padded cache; the shorter of the two caches is then left-padded with zeros
  to the other's length and both are concatenated along the batch dimension. Leaving rows are removed with an
  index-select, and the leading columns that became padding in every remaining row are cut off. Only
  `DynamicLayer`s (full attention) can be merged this way: sliding-window layers are refused. Each layer keeps its
  keys and values in a buffer with room to grow (`_GrowingLayer`): a decode step writes one column in place instead
  of copying the whole cache, as `DynamicLayer`'s concatenation does (with 16 rows of 400 tokens, a decode step
  took 162-175 ms instead of 215-231 ms). A row leaving copies the others once, straight into new buffers (one of
  32 rows of 80 tokens leaving, and the next append, over 30 layers: 19 ms instead of 44 ms).
- Mixed adapters. Rows use their own adapters (or none) through `AdapterSlots.routed`, our grouped LoRA
  computation (`lora_slots.py`): the cost of a step hardly depends on how many distinct adapters the batch holds.
- Chunked prefill. Newcomers are prefilled together, at most `max_prefill_tokens` padded prompt tokens per step:
  as many rows as fit (at least one), and a prompt longer than that in chunks of columns over several steps, each
  followed by a decode step of the running rows, so a long prompt never stalls the others for long.
- Sampling is per row, on float32 logits: greedy at temperature 0, else temperature and top-p (no top-k) with a
  `torch.Generator` of the row's own, so a seed gives the same tokens whatever else shares the batch. Rows that ask
  for log-probabilities get them from the same logits (a log-softmax of the row, and its top k).
- The owner loads or unloads adapters inside `run_between_steps`, which no forward pass overlaps. Unloading an
  adapter that `adapters_in_use()` reports breaks the rows using it; they get the error.
"""

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from app.serving.backend import GeneratedToken, QueuedTokenStream
from app.serving.lora_slots import AdapterSlots

T = TypeVar("T")


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
    length: int = 0  # real tokens in the cache, which is also the position of the next one
    generated: int = 0
    next_token: int = -1  # sampled and streamed, not yet in the cache

    def accept(self, token: GeneratedToken) -> bool:
        """Stream a newly sampled token; True when the row is done."""
        self.next_token, self.generated = token.id, self.generated + 1
        self.stream._put(token)
        done = token.id in self.eos_token_ids or self.generated >= self.max_new_tokens
        if done:
            self.stream._end()
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


@dataclass
class _Batch:
    rows: list[_Row]
    cache: DynamicCache
    mask: torch.Tensor  # [rows, columns], 1 on real tokens; every row is left-padded

    def merge(self, other: "_Batch") -> None:
        """Append the rows of `other`, left-padding whichever cache is shorter."""
        columns = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(_growing_layers(self.cache), _growing_layers(other.cache), strict=True):
            mine.append_rows(theirs, columns)
        self.mask = torch.cat([_left_pad(self.mask, columns, -1), _left_pad(other.mask, columns, -1)])
        self.rows = self.rows + other.rows  # a new list: a step keeps the one it started with

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows, and cut off the columns that are padding in all of them."""
        if len(indices) == len(self.rows):
            return
        index = torch.tensor(indices, device=self.mask.device)
        mask = self.mask[index]
        start = mask.shape[1] - int(mask.sum(dim=1).max())
        for layer in _growing_layers(self.cache):
            layer.keep_rows(index, start)
        self.mask = mask[:, start:]
        self.rows = [self.rows[i] for i in indices]


# transformers leaves the base class's __init_subclass__ and __init__ unannotated.
class _GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A `DynamicLayer` whose `keys` and `values` are views of buffers with free columns after them: appending
    writes into the buffers, and only a full buffer (or tensors replaced by a merge) is copied into a new one, a
    quarter longer than needed. Cutting rows out copies the rest straight into new buffers."""

    _buffers: tuple[torch.Tensor, torch.Tensor] | None = None  # for the keys and the values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self._cached()
        length = self.get_seq_length()
        needed = length + key_states.shape[-2]
        buffers = self._buffers
        if buffers is None or buffers[0].shape[-2] < needed or (length and keys.data_ptr() != buffers[0].data_ptr()):
            buffers = self._allocate(key_states, value_states, key_states.shape[0], needed)
            if length:
                buffers[0][..., :length, :] = keys
                buffers[1][..., :length, :] = values
        key_buffer, value_buffer = buffers
        key_buffer[..., length:needed, :] = key_states
        value_buffer[..., length:needed, :] = value_states
        self.keys, self.values = key_buffer[..., :needed, :], value_buffer[..., :needed, :]
        return self.keys, self.values

    def append_rows(self, other: "_GrowingLayer", columns: int) -> None:
        """Add the rows of `other` after these, both left-padded to `columns` columns."""
        (keys, values), (other_keys, other_values) = self._cached(), other._cached()
        self.keys = torch.cat([_left_pad(keys, columns, -2), _left_pad(other_keys, columns, -2)])
        self.values = torch.cat([_left_pad(values, columns, -2), _left_pad(other_values, columns, -2)])

    def keep_rows(self, index: torch.Tensor, start: int) -> None:
        """Keep the rows `index`, from column `start` on."""
        keys, values = self._cached()
        keys, values = keys[..., start:, :], values[..., start:, :]
        length = keys.shape[-2]
        key_buffer, value_buffer = self._allocate(keys, values, len(index), length)
        self.keys, self.values = key_buffer[..., :length, :], value_buffer[..., :length, :]
        torch.index_select(keys, 0, index, out=self.keys)
        torch.index_select(values, 0, index, out=self.values)

    def _cached(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values held, which exist once the first `update` initialised the layer."""
        if self.keys is None or self.values is None:
            raise RuntimeError("the cache layer has not been initialised")
        return self.keys, self.values

    def _allocate(
        self, keys: torch.Tensor, values: torch.Tensor, rows: int, length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """New buffers for `rows` rows of `length` columns and a quarter more (at least 32) to grow into."""
        columns = length + max(length // 4, 32)
        self._buffers = (
            keys.new_empty(rows, *keys.shape[1:-2], columns, keys.shape[-1]),
            values.new_empty(rows, *values.shape[1:-2], columns, values.shape[-1]),
        )
        return self._buffers


def _new_cache(config: PretrainedConfig) -> DynamicCache:
    cache = DynamicCache(config=config)
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        raise NotImplementedError("continuous batching needs full-attention cache layers (no sliding window)")
    cache.layers = [_GrowingLayer() for _ in cache.layers]  # type: ignore[no-untyped-call]
    return cache


def _growing_layers(cache: DynamicCache) -> list[_GrowingLayer]:
    """The layers of a cache `_new_cache` made."""
    layers = [layer for layer in cache.layers if isinstance(layer, _GrowingLayer)]
    if len(layers) != len(cache.layers):
        raise TypeError("continuous batching needs a cache made by `_new_cache`")
    return layers


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    padding = [0, 0] * (-dim - 1) + [missing, 0]  # F.pad lists (left, right) pairs from the last dimension back
    return F.pad(tensor, padding)


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
    ) -> None:
        if max_batch_size < 1 or max_prefill_tokens < 1:
            raise ValueError("max_batch_size and max_prefill_tokens must be at least 1")
        self._model = model
        self._adapters = adapters
        self._device = torch.device(device)
        self._max_batch_size = max_batch_size
        self._max_prefill_tokens = max_prefill_tokens
        self._waiting: deque[_Row] = deque()
        self._batch: _Batch | None = None  # only the decode thread changes it and `_prefill`
        self._prefill: _Prefill | None = None
        self._wakeup = threading.Condition()
        self._model_lock = threading.Lock()  # held by every step, and by `run_between_steps`
        self._thread: threading.Thread | None = None
        self._closed = False

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
    ) -> TokenStream:
        """Queue a request; `adapter` is a name loaded in the slots (None: the base model), temperature 0 is greedy,
        `logprobs` as in `SamplingParams`."""
        if not prompt_ids or max_new_tokens < 1:
            raise ValueError("a request needs a prompt and max_new_tokens of at least 1")
        stream = TokenStream(on_cancel=self._notify)
        row = _Row(
            prompt_ids, adapter, max_new_tokens, temperature, top_p, self._generator(temperature, seed),
            frozenset(eos_token_ids), logprobs, stream,
        )  # fmt: skip
        with self._wakeup:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.append(row)
            self._start()
            self._wakeup.notify()
        return stream

    def run_between_steps(self, action: Callable[[], T]) -> T:
        """Run `action` (load or unload adapters) while no forward pass runs."""
        with self._model_lock:
            return action()

    def adapters_in_use(self) -> set[str]:
        """Adapters of running or waiting requests; consistent when called inside `run_between_steps`."""
        with self._wakeup:
            rows = [*self._running_rows(), *self._waiting]
        return {row.adapter for row in rows if row.adapter is not None and not row.stream.cancelled}

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
        batch, prefill = self._batch, self._prefill
        return [*(batch.rows if batch else []), *(prefill.rows if prefill else [])]

    def _run(self) -> None:
        while self._wait_for_work():
            with self._model_lock, torch.inference_mode():
                if self._prefill is None:
                    self._start_prefill(self._take_waiting())
                rows = self._running_rows()
                try:
                    self._step()
                except Exception as error:  # the batch may be half-updated: every row of the step fails
                    self._batch = self._prefill = None
                    for row in rows:
                        row.stream._fail(error)
        self._fail_all(RuntimeError("the batcher is closed"))

    def _step(self) -> None:
        self._drop(lambda row: row.stream.cancelled)
        if self._prefill is not None:
            self._prefill_chunk(self._prefill)
        if self._batch is not None:
            self._decode(self._batch)

    def _wait_for_work(self) -> bool:
        with self._wakeup:
            while not self._closed and not self._waiting and self._batch is None and self._prefill is None:
                self._wakeup.wait()
            return not self._closed

    def _take_waiting(self) -> list[_Row]:
        """The waiting rows to prefill now: as many as fit in the batch and in the prefill budget, at least one."""
        room = self._max_batch_size - len(self._running_rows())
        taken: list[_Row] = []
        with self._wakeup:
            while self._waiting and len(taken) < room:
                row = self._waiting[0]
                longest = max([len(row.prompt_ids), *(len(r.prompt_ids) for r in taken)])
                if taken and longest * (len(taken) + 1) > self._max_prefill_tokens:
                    break
                self._waiting.popleft()
                if not row.stream.cancelled:
                    taken.append(row)
        return taken

    def _forward(self, rows: list[_Row], decoding: bool, **inputs: Any) -> torch.Tensor:
        """Last-position logits, each row through its own adapter (the running batch's stay staged)."""
        with self._adapters.routed([row.adapter for row in rows], staged=decoding):
            logits: torch.Tensor = self._model(**inputs, use_cache=True, logits_to_keep=1).logits
            return logits[:, -1]

    def _start_prefill(self, rows: list[_Row]) -> None:
        """Lay the newcomers out left-padded; `_prefill_chunk` feeds them to the model over the next steps."""
        for row in rows:
            if row.adapter is not None and row.adapter not in self._adapters:
                row.stream._fail(ValueError(f"adapter {row.adapter!r} is not loaded"))
        rows = [row for row in rows if row.adapter is None or row.adapter in self._adapters]
        if not rows:
            return
        columns = max(len(row.prompt_ids) for row in rows)
        input_ids = torch.zeros((len(rows), columns), dtype=torch.long)
        mask = torch.zeros((len(rows), columns), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, columns - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            mask[i, columns - len(row.prompt_ids) :] = 1
            row.length = len(row.prompt_ids)
        chunk = max(1, self._max_prefill_tokens // len(rows))
        cache = _new_cache(self._model.config)
        self._prefill = _Prefill(rows, input_ids.to(self._device), mask.to(self._device), cache, chunk)

    def _prefill_chunk(self, prefill: _Prefill) -> None:
        """Feed the next chunk of the newcomers' prompts; after the last one, stream their first tokens and add the
        unfinished ones to the batch. A failure fails the newcomers only: the running rows are untouched."""
        end = min(prefill.done + prefill.chunk, prefill.input_ids.shape[1])
        mask = prefill.mask[:, :end]
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, prefill.done :]
        try:
            logits = self._forward(
                prefill.rows, decoding=False, input_ids=prefill.input_ids[:, prefill.done : end], attention_mask=mask,
                position_ids=positions, cache=prefill.cache,
            )  # fmt: skip
        except Exception as error:
            self._prefill = None
            for row in prefill.rows:
                row.stream._fail(error)
            return
        prefill.done = end
        if end < prefill.input_ids.shape[1]:
            return
        self._prefill = None
        newcomers = _Batch(prefill.rows, prefill.cache, prefill.mask)
        if self._batch is None:
            self._batch = newcomers
        else:
            self._batch.merge(newcomers)
        self._accept(prefill.rows, logits)

    def _decode(self, batch: _Batch) -> None:
        """Feed every row its last sampled token and sample the next."""
        rows = batch.rows
        input_ids = torch.tensor([[row.next_token] for row in rows], device=self._device)
        positions = torch.tensor([[row.length] for row in rows], device=self._device)
        mask = F.pad(batch.mask, (0, 1), value=1)
        logits = self._forward(
            rows, decoding=True, input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=batch.cache
        )
        batch.mask = mask
        for row in rows:
            row.length += 1
        self._accept(rows, logits)

    def _accept(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Sample a token for each row and drop the rows that are done."""
        done = set()
        for row, token in zip(rows, _next_tokens(rows, logits), strict=True):
            if row.accept(token):
                done.add(row)
        if done:
            self._drop(lambda row: row in done)

    def _drop(self, leaves: Callable[[_Row], bool]) -> None:
        if self._batch is None:
            return
        kept = [i for i, row in enumerate(self._batch.rows) if not leaves(row)]
        if kept:
            self._batch.keep(kept)
        else:
            self._batch = None

    def _fail_all(self, error: BaseException) -> None:
        with self._wakeup:
            rows = [*self._running_rows(), *self._waiting]
            self._batch, self._prefill, self._waiting = None, None, deque()
        for row in rows:
            row.stream._fail(error)
