"""In-process generation: one base model in memory per id, LoRA adapters chosen per request, and requests for
different adapters (or none) decoded together by a continuous batcher per base model.

Adapters of a base model live in its `AdapterSlots` (preallocated tensors: loading one is a copy, milliseconds),
at most `max_adapters` of them and at most `max_adapter_bytes` of their slots, least recently used evicted first
(never one that a running request uses, nor a pinned one). Their files are fetched once into `cache_dir` and kept
there, so an evicted adapter comes back from disk; beyond `max_adapter_disk_bytes` the least recently used files
of adapters not in memory are deleted (`AdapterFiles`). Adapters are loaded and evicted only between decode steps
(`ContinuousBatcher.run_between_steps`). A batcher whose decode loop broke (its requests got the error) is replaced
by a new one at the next request: a failure that passes does not take the base model down for good.
"""

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.core.metrics import ADAPTER_CACHE_HITS, ADAPTER_CACHE_MISSES, ADAPTER_LOAD_SECONDS
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.chat_format import render_prompt_ids
from app.ml.chat_templates import end_of_turn_ids
from app.serving.adapter_files import AdapterFiles, FetchAdapter
from app.serving.adapter_files import adapter_directory_name as adapter_directory_name  # where callers look for it
from app.serving.backend import SamplingParams
from app.serving.batching import ContinuousBatcher, TokenStream
from app.serving.detokenize import Detokenizer, FinishReason
from app.serving.errors import EngineError, GenerationFailed, SlotsBusy
from app.serving.lora_slots import AdapterSlots, SlotsFull

log = structlog.get_logger()


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


@dataclass
class _LoadedBase:
    id: str
    revision: str  # of the registry's spec when loaded: a model removed and added again is loaded afresh
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    slots: AdapterSlots
    batcher: ContinuousBatcher
    recency: OrderedDict[str, None] = field(default_factory=OrderedDict)  # loaded adapters, least recently used first


def model_end_of_turn_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokens that end the model's answer: its generation config's end tokens, the tokenizer's EOS and its chat
    template's end-of-turn token (a base model given a template stops at `<end_of_turn>`, not only at EOS)."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured]) | end_of_turn_ids(tokenizer)
    return sorted(i for i in ids if i is not None)


class InferenceEngine:
    def __init__(
        self,
        registry: BaseModelRegistry,
        fetch_adapter: FetchAdapter,
        cache_dir: Path,
        max_adapters: int = 8,
        device: str = "cpu",
        max_batch_size: int = 16,
        max_adapter_bytes: int | None = None,
        prefill_chunk_tokens: int = 512,
        max_lora_rank: int = 64,
        request_timeout_s: float | None = None,
        max_adapter_disk_bytes: int | None = None,
        rows_per_organization_when_shared: int | None = None,
    ) -> None:
        if max_adapters < 1:
            raise ValueError("max_adapters must be at least 1")
        self._registry = registry
        self._files = AdapterFiles(cache_dir, fetch_adapter, max_adapter_disk_bytes, self._resident_adapters)
        self._max_adapters = max_adapters
        self._max_adapter_bytes = max_adapter_bytes
        self._device = torch.device(device)
        self._max_batch_size = max_batch_size
        self._prefill_chunk_tokens = prefill_chunk_tokens
        self._max_lora_rank = max_lora_rank
        self._request_timeout_s = request_timeout_s  # a request still generating then fails, even mid-prefill
        self._rows_per_organization = rows_per_organization_when_shared  # see `ContinuousBatcher`
        self._pinned: set[str] = set()
        self._bases: dict[str, _LoadedBase] = {}
        self._loading = threading.Lock()
        self._restarting = threading.Lock()

    def tokenizer(self, base_model_id: str) -> PreTrainedTokenizerBase:
        return self._base(base_model_id).tokenizer

    def end_of_turn_ids(self, base_model_id: str) -> set[int]:
        base = self._base(base_model_id)
        return set(model_end_of_turn_ids(base.model, base.tokenizer))

    def stream_tokens(
        self, base_model_id: str, adapter_name: str | None, prompt_ids: list[int], params: SamplingParams
    ) -> TokenStream:
        """Generated token ids as they come (an end-of-turn token last when the model stopped by itself).

        `cancel()` on the stream (the caller met a stop sequence, or its client went away) frees its row before
        the next decode step. A failure of the decode thread is raised to the reader as an `EngineError` (a
        `GenerationFailed` naming the model, unless the engine refused the request in words of its own).
        """
        base = self._base(base_model_id)
        batcher = self._batcher(base)
        missed = adapter_name is not None and adapter_name not in base.recency
        if adapter_name:
            (ADAPTER_CACHE_MISSES if missed else ADAPTER_CACHE_HITS).inc()
        started = time.perf_counter()
        adapter_dir = self._adapter_files(adapter_name) if adapter_name else None
        end_ids = set(model_end_of_turn_ids(base.model, base.tokenizer))

        def submit() -> TokenStream:
            if adapter_name and adapter_dir:
                self._load(base, adapter_name, adapter_dir)
                if missed:  # from the miss to the adapter in memory: fetched (disk or storage), then copied in
                    ADAPTER_LOAD_SECONDS.observe(time.perf_counter() - started)
            return batcher.submit(
                prompt_ids, adapter_name, params.max_tokens, params.temperature, params.top_p, params.seed, end_ids,
                params.logprobs, params.organization,
            )  # fmt: skip

        return batcher.run_between_steps(submit)

    def generate(
        self,
        base_model_id: str,
        adapter_name: str | None,
        messages: list[dict[str, Any]],
        params: SamplingParams,
        stop: list[str] | None = None,
    ) -> Completion:
        """The assistant's whole reply to `messages`."""
        tokenizer = self.tokenizer(base_model_id)
        prompt_ids = render_prompt_ids(tokenizer, messages)
        text = Detokenizer(tokenizer, self.end_of_turn_ids(base_model_id), stop or [])
        tokens = self.stream_tokens(base_model_id, adapter_name, prompt_ids, params)
        parts = []
        for token in tokens:
            parts.append(text.feed(token.id))
            if text.finished:
                tokens.cancel()
                break
        parts.append(text.close())
        return Completion("".join(parts), len(prompt_ids), text.completion_tokens, text.finish_reason or "length")

    def warm(self, base_model_id: str, adapter_name: str) -> None:
        """Fetch the adapter's files, and load it if its base model is already in memory here."""
        adapter_dir = self._adapter_files(adapter_name)
        base = self._bases.get(base_model_id)
        if base is not None:
            base.batcher.run_between_steps(lambda: self._load(base, adapter_name, adapter_dir))

    def pin(self, base_model_id: str, adapter_name: str) -> None:
        """Load the adapter (and its base model) now and never evict it: a hot adapter never waits for a load."""
        base = self._base(base_model_id)
        adapter_dir = self._adapter_files(adapter_name)
        self._pinned.add(adapter_name)
        base.batcher.run_between_steps(lambda: self._load(base, adapter_name, adapter_dir))

    def loaded_adapters(self, base_model_id: str) -> list[str]:
        """Adapters in memory for a base model, least recently used first."""
        base = self._bases.get(base_model_id)
        return list(base.recency) if base else []

    def evict(self, adapter_name: str) -> None:
        """Forget an adapter: unload it from every base model and delete its local files. Requests already
        generating with it finish first: its weights stay until the LRU drops them."""
        self._pinned.discard(adapter_name)
        for base in list(self._bases.values()):

            def unload(base: _LoadedBase = base) -> None:
                if adapter_name in base.recency and adapter_name not in base.batcher.adapters_in_use():
                    del base.recency[adapter_name]
                    base.slots.unload(adapter_name)

            base.batcher.run_between_steps(unload)
        self._files.remove(adapter_name)

    def _base(self, base_model_id: str) -> _LoadedBase:
        revision = self._registry.get(base_model_id).revision
        base = self._bases.get(base_model_id)
        if base is None or base.revision != revision:
            with self._loading:  # one load at a time: a base model is big, and two would be wasted work
                base = self._bases.get(base_model_id)
                if base is None or base.revision != revision:
                    stale = base
                    model, tokenizer = self._registry.load(base_model_id, device=str(self._device))
                    # Room for the cache, plus adapters of running requests beyond it, which are never evicted.
                    slots = AdapterSlots(model, self._max_adapters + self._max_batch_size, self._max_lora_rank)
                    batcher = self._new_batcher(base_model_id, model, slots)
                    base = _LoadedBase(base_model_id, revision, model, tokenizer, slots, batcher)
                    self._bases[base_model_id] = base
                    if stale is not None:  # its weights are gone from the deployment: its requests end with an error
                        stale.batcher.close()
        return base

    def _new_batcher(self, base_model_id: str, model: PreTrainedModel, slots: AdapterSlots) -> ContinuousBatcher:
        return ContinuousBatcher(
            model, slots, self._device, self._max_batch_size, self._prefill_chunk_tokens, self._request_timeout_s,
            self._rows_per_organization, model_name=base_model_id,
        )  # fmt: skip

    def _batcher(self, base: _LoadedBase) -> ContinuousBatcher:
        """The base model's batcher; a new one in place of one whose decode loop broke."""
        if base.batcher.closed:
            with self._restarting:
                if base.batcher.closed:
                    base.batcher.close()  # waits for its thread to end: none of its steps overlaps the new one's
                    log.warning("inference.batcher_restarted", model=base.id)
                    base.batcher = self._new_batcher(base.id, base.model, base.slots)
        return base.batcher

    def _adapter_files(self, adapter_name: str) -> Path:
        return self._files.path(adapter_name)

    def _resident_adapters(self) -> set[str]:
        """Adapters in memory (their files stay on disk), read from other threads than the steps that change them."""
        names = set(self._pinned)
        for base in list(self._bases.values()):
            while True:
                try:
                    names.update(list(base.recency))
                    break
                except RuntimeError:  # changed while being copied: copy again
                    continue
        return names

    def _load(self, base: _LoadedBase, adapter_name: str, adapter_dir: Path) -> None:
        """Make the adapter resident (the most recently used), evicting least recently used idle ones to stay
        within the limits. Called between decode steps only."""
        if adapter_name not in base.recency:
            self._evict_idle(base, room_for_one=True)
            try:
                base.slots.load(adapter_name, adapter_dir)
            except SlotsFull:  # every resident adapter is pinned or used by a request still generating
                raise SlotsBusy(
                    "Every adapter slot of this server holds a model that requests are using right now; "
                    "retry in a moment",
                    retry_after=1,
                ) from None
            except Exception as error:
                if isinstance(error, EngineError):  # a refusal of the engine's own (a rank above its limit)
                    raise
                log.error("inference.adapter_load_failed", model=base.id, exc_info=error)
                raise GenerationFailed.of(base.id, error, "loading the fine-tuned model's adapter") from error
            base.recency[adapter_name] = None
        base.recency.move_to_end(adapter_name)
        # A larger rank may have grown every slot. The adapter just loaded stays: its request is not submitted yet.
        self._evict_idle(base, room_for_one=False, loading=adapter_name)

    def _evict_idle(self, base: _LoadedBase, room_for_one: bool, loading: str | None = None) -> None:
        keep = base.batcher.adapters_in_use() | self._pinned | {loading}
        idle = [name for name in base.recency if name not in keep]
        extra = 1 if room_for_one else 0
        while idle and self._over_budget(base, len(base.recency) + extra):
            name = idle.pop(0)
            del base.recency[name]
            base.slots.unload(name)

    def _over_budget(self, base: _LoadedBase, adapters: int) -> bool:
        budget = self._max_adapter_bytes
        too_big = budget is not None and adapters * base.slots.slot_bytes() > budget
        return adapters > self._max_adapters or too_big
