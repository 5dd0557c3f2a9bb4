"""In-process generation: one base model in memory per id, LoRA adapters chosen per request, and requests for
different adapters (or none) decoded together by a continuous batcher per base model.

Adapters of a base model live in one PeftModel (`load_adapter`), at most `max_adapters` of them and at most
`max_adapter_bytes` of weights, least recently used evicted first (never one that a running request uses).
Their files are fetched once into `cache_dir` and kept there, so an evicted adapter comes back from disk.
Adapters are loaded and evicted only between decode steps (`ContinuousBatcher.run_between_steps`).
"""

import hashlib
import re
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.base_models.disk_cache import build_once
from app.base_models.registry import BaseModelRegistry
from app.chat_format import render_prompt_ids
from app.inference.backend import SamplingParams
from app.inference.batching import ContinuousBatcher, TokenStream
from app.inference.detokenize import Detokenizer, FinishReason

FetchAdapter = Callable[[str, Path], None]


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


@dataclass
class _LoadedBase:
    model: PreTrainedModel | PeftModel
    tokenizer: PreTrainedTokenizerBase
    batcher: ContinuousBatcher
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)  # adapter name → peft key, LRU first
    adapter_bytes: dict[str, int] = field(default_factory=dict)  # adapter name → size of its weights


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def adapter_directory_name(adapter_name: str) -> str:
    """A file name for the adapter that stays readable and cannot collide (names may contain ':' or '/')."""
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', adapter_name)[:80]}-{_digest(adapter_name)[:12]}"


def _peft_key(adapter_name: str) -> str:
    return f"adapter_{_digest(adapter_name)[:16]}"  # peft keys become module names: no '.' allowed


def _weights_bytes(adapter_dir: Path) -> int:
    """The adapter's size in memory, as its weight files hold it (peft loads them at their stored precision)."""
    return sum(path.stat().st_size for path in adapter_dir.glob("*.safetensors"))


def _end_of_turn_ids(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
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
    ) -> None:
        if max_adapters < 1:
            raise ValueError("max_adapters must be at least 1")
        self._registry = registry
        self._fetch_adapter = fetch_adapter
        self._cache_dir = cache_dir
        self._max_adapters = max_adapters
        self._max_adapter_bytes = max_adapter_bytes
        self._device = torch.device(device)
        self._max_batch_size = max_batch_size
        self._bases: dict[str, _LoadedBase] = {}
        self._loading = threading.Lock()

    def tokenizer(self, base_model_id: str) -> PreTrainedTokenizerBase:
        return self._base(base_model_id).tokenizer

    def end_of_turn_ids(self, base_model_id: str) -> set[int]:
        base = self._base(base_model_id)
        return set(_end_of_turn_ids(base.model, base.tokenizer))

    def stream_tokens(
        self, base_model_id: str, adapter_name: str | None, prompt_ids: list[int], params: SamplingParams
    ) -> TokenStream:
        """Generated token ids as they come (an end-of-turn token last when the model stopped by itself).

        `cancel()` on the stream (the caller met a stop sequence, or its client went away) frees its row before
        the next decode step. Errors of the decode thread are raised to the reader.
        """
        base = self._base(base_model_id)
        adapter_dir = self._adapter_files(adapter_name) if adapter_name else None
        end_ids = set(_end_of_turn_ids(base.model, base.tokenizer))

        def submit() -> TokenStream:
            key = self._load(base, adapter_name, adapter_dir) if adapter_name and adapter_dir else None
            return base.batcher.submit(
                prompt_ids, key, params.max_tokens, params.temperature, params.top_p, params.seed, end_ids
            )

        return base.batcher.run_between_steps(submit)

    def generate(
        self,
        base_model_id: str,
        adapter_name: str | None,
        messages: list[dict],
        params: SamplingParams,
        stop: list[str] | None = None,
    ) -> Completion:
        """The assistant's whole reply to `messages`."""
        tokenizer = self.tokenizer(base_model_id)
        prompt_ids = render_prompt_ids(tokenizer, messages)
        text = Detokenizer(tokenizer, self.end_of_turn_ids(base_model_id), stop or [])
        tokens = self.stream_tokens(base_model_id, adapter_name, prompt_ids, params)
        parts = []
        for token_id in tokens:
            parts.append(text.feed(token_id))
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

    def loaded_adapters(self, base_model_id: str) -> list[str]:
        """Adapters in memory for a base model, least recently used first."""
        base = self._bases.get(base_model_id)
        return list(base.adapters) if base else []

    def evict(self, adapter_name: str) -> None:
        """Forget an adapter: unload it from every base model and delete its local files. Requests already
        generating with it finish first: its weights stay until the LRU drops them."""
        for base in list(self._bases.values()):

            def unload(base: _LoadedBase = base) -> None:
                key = base.adapters.get(adapter_name)
                if key is not None and key not in base.batcher.adapters_in_use():
                    del base.adapters[adapter_name], base.adapter_bytes[adapter_name]
                    base.model.delete_adapter(key)

            base.batcher.run_between_steps(unload)
        shutil.rmtree(self._cache_dir / adapter_directory_name(adapter_name), ignore_errors=True)

    def _base(self, base_model_id: str) -> _LoadedBase:
        base = self._bases.get(base_model_id)
        if base is None:
            with self._loading:  # one load at a time: a base model is big, and two would be wasted work
                base = self._bases.get(base_model_id)
                if base is None:
                    model, tokenizer = self._registry.load(base_model_id, device=str(self._device))
                    # The batcher reads `model` at every step: loading the first adapter replaces it.
                    batcher = ContinuousBatcher(lambda: loaded.model, self._device, self._max_batch_size)
                    loaded = base = self._bases[base_model_id] = _LoadedBase(model, tokenizer, batcher)
        return base

    def _adapter_files(self, adapter_name: str) -> Path:
        # build_once's flock serialises threads as well as processes, so a cold adapter is fetched once.
        directory = self._cache_dir / adapter_directory_name(adapter_name)
        build_once(directory, lambda staging: self._fetch_adapter(adapter_name, staging))
        return directory

    def _load(self, base: _LoadedBase, adapter_name: str, adapter_dir: Path) -> str:
        """The adapter's peft key, loading it and evicting the least recently used idle ones beyond the limit.
        Called between decode steps only."""
        key = base.adapters.get(adapter_name)
        if key is None:
            key = _peft_key(adapter_name)
            if isinstance(base.model, PeftModel):
                base.model.load_adapter(adapter_dir, adapter_name=key)
                # The batcher switches adapters only when the model's active one differs, which a reloaded
                # adapter of the same name would not seem to: make it the active one now.
                base.model.set_adapter(key, inference_mode=True)
            else:
                base.model = PeftModel.from_pretrained(base.model, adapter_dir, adapter_name=key)
            base.adapters[adapter_name] = key
            base.adapter_bytes[adapter_name] = _weights_bytes(adapter_dir)
        base.adapters.move_to_end(adapter_name)
        in_use = base.batcher.adapters_in_use() | {key}
        idle = [name for name, loaded_key in base.adapters.items() if loaded_key not in in_use]
        while idle and self._over_budget(base):
            name = idle.pop(0)
            base.model.delete_adapter(base.adapters.pop(name))
            del base.adapter_bytes[name]
        return key

    def _over_budget(self, base: _LoadedBase) -> bool:
        too_many = len(base.adapters) > self._max_adapters
        budget = self._max_adapter_bytes
        return too_many or (budget is not None and sum(base.adapter_bytes.values()) > budget)
