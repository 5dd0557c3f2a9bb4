"""In-process generation: one base model in memory per id, LoRA adapters chosen per request.

Adapters of a base model live in one PeftModel (`load_adapter` / `set_adapter`), at most `max_adapters`
of them, least recently used evicted first. Their files are fetched once into `cache_dir` and kept there,
so an evicted adapter comes back from disk. A lock per base model serialises generation for now; tokens are
streamed from a generating thread as they come.
"""

import hashlib
import queue
import re
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from app.base_models.disk_cache import build_once
from app.base_models.registry import BaseModelRegistry
from app.chat_format import render_prompt_ids
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
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)  # adapter name → peft key, LRU first
    lock: threading.Lock = field(default_factory=threading.Lock)


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def adapter_directory_name(adapter_name: str) -> str:
    """A file name for the adapter that stays readable and cannot collide (names may contain ':' or '/')."""
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', adapter_name)[:80]}-{_digest(adapter_name)[:12]}"


def _peft_key(adapter_name: str) -> str:
    return f"adapter_{_digest(adapter_name)[:16]}"  # peft keys become module names: no '.' allowed


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None


_END = object()  # marks the end of a token stream


class TokenStream:
    """Token ids from a generating thread to one reader; iterate it, and `cancel` it to stop generation."""

    def __init__(self) -> None:
        self._items: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()

    def put(self, item: object) -> None:
        self._items.put(item)

    def cancel(self) -> None:
        self.cancelled.set()

    def __iter__(self) -> "TokenStream":
        return self

    def __next__(self) -> int:
        item = self._items.get()
        if item is _END:
            self._items.put(_END)  # a later read ends too
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item


class _QueueStreamer(BaseStreamer):
    """Puts each generated token id on a stream; `generate` hands the prompt over first, which is skipped."""

    def __init__(self, tokens: TokenStream) -> None:
        self.tokens, self.prompt_seen = tokens, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            self.tokens.put(token_id)

    def end(self) -> None:
        pass


class _Cancelled(StoppingCriteria):
    """Ends generation once the consumer has gone."""

    def __init__(self, cancelled: threading.Event) -> None:
        self.cancelled = cancelled

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.cancelled.is_set(), dtype=torch.bool, device=input_ids.device)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed sampling for one request without disturbing the process-wide random state."""
    cuda_devices = [device.index or torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield


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
    ) -> None:
        if max_adapters < 1:
            raise ValueError("max_adapters must be at least 1")
        self._registry = registry
        self._fetch_adapter = fetch_adapter
        self._cache_dir = cache_dir
        self._max_adapters = max_adapters
        self._device = torch.device(device)
        self._bases: dict[str, _LoadedBase] = {}
        self._loading = threading.Lock()

    def tokenizer(self, base_model_id: str) -> PreTrainedTokenizerBase:
        return self._base(base_model_id).tokenizer

    def end_of_turn_ids(self, base_model_id: str) -> set[int]:
        base = self._base(base_model_id)
        return set(_end_of_turn_ids(base.model, base.tokenizer))

    def stream_tokens(
        self, base_model_id: str, adapter_name: str | None, prompt_ids: list[int], params: SamplingParams
    ) -> "TokenStream":
        """Generated token ids as they come (an end-of-turn token last when the model stopped by itself).

        `cancel()` on the stream (the caller met a stop sequence, or its client went away) ends generation at
        the next step. Errors of the generating thread are raised to the reader.
        """
        base = self._base(base_model_id)
        adapter_dir = self._adapter_files(adapter_name) if adapter_name else None
        stream = TokenStream()

        def run() -> None:
            try:
                with base.lock:
                    if not stream.cancelled.is_set():
                        self._generate(base, adapter_name, adapter_dir, prompt_ids, params, stream)
            except BaseException as error:  # handed to the reader, who raises it
                stream.put(error)
            finally:
                stream.put(_END)

        threading.Thread(target=run, name="generate", daemon=True).start()
        return stream

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

    def loaded_adapters(self, base_model_id: str) -> list[str]:
        """Adapters in memory for a base model, least recently used first."""
        base = self._bases.get(base_model_id)
        return list(base.adapters) if base else []

    def evict(self, adapter_name: str) -> None:
        """Forget an adapter: unload it from every base model and delete its local files."""
        for base in list(self._bases.values()):
            with base.lock:
                key = base.adapters.pop(adapter_name, None)
                if key is not None:
                    base.model.delete_adapter(key)
        shutil.rmtree(self._cache_dir / adapter_directory_name(adapter_name), ignore_errors=True)

    def _base(self, base_model_id: str) -> _LoadedBase:
        base = self._bases.get(base_model_id)
        if base is None:
            with self._loading:  # one load at a time: a base model is big, and two would be wasted work
                base = self._bases.get(base_model_id)
                if base is None:
                    model, tokenizer = self._registry.load(base_model_id, device=str(self._device))
                    base = self._bases[base_model_id] = _LoadedBase(model, tokenizer)
        return base

    def _adapter_files(self, adapter_name: str) -> Path:
        # build_once's flock serialises threads as well as processes, so a cold adapter is fetched once.
        directory = self._cache_dir / adapter_directory_name(adapter_name)
        build_once(directory, lambda staging: self._fetch_adapter(adapter_name, staging))
        return directory

    def _activate(self, base: _LoadedBase, adapter_name: str, adapter_dir: Path) -> None:
        """Make the adapter the active one, loading it and evicting the least recently used if needed."""
        key = base.adapters.get(adapter_name)
        if key is None:
            key = _peft_key(adapter_name)
            if isinstance(base.model, PeftModel):
                base.model.load_adapter(adapter_dir, adapter_name=key)
            else:
                base.model = PeftModel.from_pretrained(base.model, adapter_dir, adapter_name=key)
            base.adapters[adapter_name] = key
            while len(base.adapters) > self._max_adapters:
                _, evicted = base.adapters.popitem(last=False)
                base.model.delete_adapter(evicted)
        base.adapters.move_to_end(adapter_name)
        base.model.set_adapter(key)

    def _generate(
        self,
        base: _LoadedBase,
        adapter_name: str | None,
        adapter_dir: Path | None,
        prompt_ids: list[int],
        params: SamplingParams,
        stream: "TokenStream",
    ) -> None:
        if adapter_name and adapter_dir:
            self._activate(base, adapter_name, adapter_dir)
            adapter_scope: AbstractContextManager = nullcontext()
        elif isinstance(base.model, PeftModel):
            adapter_scope = base.model.disable_adapter()
        else:
            adapter_scope = nullcontext()
        seed_scope = _seeded(params.seed, self._device) if params.seed is not None else nullcontext()
        sampling = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=sampling,
            temperature=params.temperature if sampling else None,
            top_p=params.top_p if sampling else None,
            top_k=0 if sampling else None,  # OpenAI's API has no top-k; transformers would default to 50
            repetition_penalty=1.0,
            eos_token_id=_end_of_turn_ids(base.model, base.tokenizer),
            pad_token_id=base.tokenizer.pad_token_id,
        )
        input_ids = torch.tensor([prompt_ids], device=self._device)
        with adapter_scope, seed_scope, torch.inference_mode():
            base.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                streamer=_QueueStreamer(stream),
                stopping_criteria=StoppingCriteriaList([_Cancelled(stream.cancelled)]),
            )
