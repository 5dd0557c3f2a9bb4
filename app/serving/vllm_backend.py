"""vLLM as the inference backend on CUDA hosts (`LORAPORT_INFERENCE_BACKEND=vllm`, the `vllm` extra).

One vLLM V1 engine (`AsyncLLM`) per base model id, started on its first request, in bf16 with LoRA enabled. Each
engine runs on an asyncio event loop of its own in a daemon thread: the API calls `stream_tokens` from worker
threads, and a `TokenStream` hands the tokens over. Adapter files are fetched once into the same local cache as the
torch engine's (`settings.adapter_cache_dir / adapter_directory_name(name)`) and given to vLLM as a `LoRARequest`;
vLLM loads them itself and keeps the most recently used ones in its own LRU caches (`max_cpu_loras` in host memory,
`max_loras` on the GPU). See docs/vllm-backend.md.

Nothing here imports vLLM at module level, so the pure helpers can be tested on a machine without it.
"""

import asyncio
import hashlib
import json
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from transformers import AutoConfig, GenerationConfig, PreTrainedTokenizerBase

from app.core.settings import Settings
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.chat_templates import end_of_turn_ids
from app.serving.adapter_files import AdapterFiles, FetchAdapter
from app.serving.backend import GeneratedToken, QueuedTokenStream, SamplingParams
from app.serving.errors import AdapterRankUnsupported

log = structlog.get_logger()

VLLM_REQUIRED = "LORAPORT_INFERENCE_BACKEND=vllm needs the `vllm` extra (pip install 'loraport[vllm]') and a CUDA GPU"
# vLLM sizes every GPU LoRA slot for `max_lora_rank` (A and B buffers of every targeted layer, `max_loras` slots),
# so the bound costs GPU memory taken from the KV cache and kernel time for every adapter, whatever its own rank.
# vLLM accepts 1, 8, 16, 32, 64, 128, 256, 320 or 512. Loraport trains rank 16 by default (`BaseModelSpec.lora_rank`)
# and a job may ask for up to 256; 64 serves the defaults and the usual choices (8 to 64) with room to spare, and a
# larger adapter is refused here with a clear error rather than failing inside vLLM's engine process.
MAX_LORA_RANK = 64
# Distinct adapters in one batch (vLLM's `max_loras`). Each GPU slot costs about 0.3 GB for a 7B Llama at rank 64
# (all seven projections, bf16); a request whose adapter finds no free slot waits a step for one. Beyond a few
# slots the memory is better spent on the KV cache.
MAX_GPU_LORAS = 8
_INT32_MAX = 2**31 - 1


class VllmUnavailable(RuntimeError):
    """The vLLM backend was chosen where it cannot run: no `vllm` package, or no CUDA GPU."""


def lora_int_id(adapter_name: str) -> int:
    """A positive int32 derived from the name's sha256: the same in every process and run (unlike `hash()`)."""
    digest = hashlib.sha256(adapter_name.encode()).digest()
    return int.from_bytes(digest[:8], "big") % _INT32_MAX + 1


class LoraIds:
    """The `lora_int_id` of each adapter name: `lora_int_id(name)`, unless another name of this process already
    holds that id. vLLM keys its LoRA caches by the id alone and does not check that it is unique, so a shared id
    would serve one tenant's adapter to another."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()

    def __call__(self, adapter_name: str) -> int:
        with self._lock:
            known = self._ids.get(adapter_name)
            if known is not None:
                return known
            candidate, attempt = lora_int_id(adapter_name), 0
            while candidate in self._names:
                attempt += 1
                candidate = lora_int_id(f"{adapter_name}#{attempt}")
            self._ids[adapter_name], self._names[candidate] = candidate, adapter_name
            return candidate


def vllm_sampling_arguments(params: SamplingParams, end_of_turn_ids: set[int]) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for ours (the caller adds `output_kind=DELTA`)."""
    greedy = params.temperature == 0  # as the torch engine: exactly 0 is greedy, and ignores top_p and seed
    return {
        "max_tokens": params.max_tokens,
        "temperature": 0.0 if greedy else params.temperature,
        "top_p": 1.0 if greedy else params.top_p,
        # vLLM seeds a torch.Generator with it in the engine process, where an out-of-range seed would fail the whole
        # batch: keep it within int64, and off -1, which vLLM reads as "no seed".
        "seed": None if greedy or params.seed is None else params.seed % 2**63,
        "stop_token_ids": sorted(end_of_turn_ids),  # vLLM keeps the stop token in the output, as TokenStream wants
        "detokenize": False,  # the API detokenizes (stop sequences included) with the base model's tokenizer
        # vLLM's logprobs are the model's own by default (`logprobs_mode` "raw_logprobs"), as the torch engine's.
        "logprobs": params.logprobs,
    }


def generated_tokens(
    token_ids: list[int], logprobs: list[dict[int, Any]] | None, top: int | None
) -> list[GeneratedToken]:
    """Our tokens from a vLLM output's new `token_ids` and their `logprobs` (per token, {token id: Logprob}: the
    `top` most likely and the sampled one)."""
    if top is None or logprobs is None:
        return [GeneratedToken(token) for token in token_ids]
    tokens = []
    for token, candidates in zip(token_ids, logprobs, strict=True):
        best = sorted(candidates.items(), key=lambda item: -item[1].logprob)[:top]
        alternatives = tuple((candidate, logprob.logprob) for candidate, logprob in best)
        tokens.append(GeneratedToken(token, candidates[token].logprob, alternatives))
    return tokens


def vllm_engine_arguments(settings: Settings, model_dir: Path) -> dict[str, Any]:
    """Keyword arguments of `vllm.engine.arg_utils.AsyncEngineArgs` for one base model."""
    max_loras = min(settings.inference_concurrency, MAX_GPU_LORAS)
    return {
        "model": str(model_dir),
        "dtype": "bfloat16",
        "enable_lora": True,
        "max_loras": max_loras,
        "max_lora_rank": MAX_LORA_RANK,
        # Adapters kept in host memory, ready to copy to a GPU slot; vLLM requires at least `max_loras`.
        # `adapter_cache_megabytes` has no vLLM counterpart: vLLM bounds its caches by count only.
        "max_cpu_loras": max(settings.adapter_cache_size, max_loras),
    }


def end_of_turn_ids_of(model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """What the torch engine stops on, read from the model's files without loading its weights: the eos ids of its
    generation config (of its model config when it has no generation_config.json), the tokenizer's eos and its chat
    template's end-of-turn token."""
    try:
        generation = GenerationConfig.from_pretrained(model_dir)
    except OSError:
        generation = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_dir))
    configured = generation.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured]) | end_of_turn_ids(tokenizer)
    return {i for i in ids if i is not None}


def adapter_rank(adapter_dir: Path) -> int:
    """The largest LoRA rank of a PEFT adapter directory (`r`, or a larger one in its `rank_pattern`)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    return max([int(config["r"]), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


class LoopTokenStream(QueuedTokenStream):
    """A `TokenStream` fed by `chunks()` (lists of tokens), which runs as a task on `loop`, in another thread.

    Iterating blocks until the next token and raises the task's error, if any. `cancel()` ends the stream at once,
    cancels the task and runs `on_cancel()` on the loop (for vLLM: abort the request); it returns without waiting.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        chunks: Callable[[], AsyncIterator[list[GeneratedToken]]],
        on_cancel: Callable[[], Awaitable[None]],
    ) -> None:
        self._loop = loop
        super().__init__()
        self._done = threading.Event()  # the task ended: cancelling is a no-op
        self._on_cancel = on_cancel
        self._task = asyncio.run_coroutine_threadsafe(self._pump(chunks), loop)

    def cancel(self) -> None:
        self._end()
        if self._done.is_set():
            return
        self._task.cancel()
        asyncio.run_coroutine_threadsafe(self._cancelled(), self._loop).add_done_callback(_log_failure)

    async def _cancelled(self) -> None:
        await self._on_cancel()

    async def _pump(self, chunks: Callable[[], AsyncIterator[list[GeneratedToken]]]) -> None:
        try:
            async for chunk in chunks():
                for token in chunk:
                    self._put(token)
            self._end()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._fail(error)
        finally:
            self._done.set()


def _log_failure(future: Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("vllm.abort_failed", exc_info=future.exception())


@dataclass(frozen=True)
class _Vllm:
    """The parts of vLLM used here (>= 0.19.1), imported when the backend is built."""

    AsyncEngineArgs: Any
    AsyncLLM: Any
    LoRARequest: Any
    RequestOutputKind: Any
    SamplingParams: Any
    TokensPrompt: Any


def _import_vllm() -> _Vllm:
    try:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm import TokensPrompt
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.platforms import current_platform
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM
    except Exception as error:  # not installed, or installed against another torch/CUDA
        raise VllmUnavailable(f"{VLLM_REQUIRED} (importing vllm failed: {error})") from error
    # vLLM's own platform check (NVML): unlike torch.cuda.is_available() it leaves CUDA uninitialised in this
    # process, so vLLM can still fork its engine process.
    if not current_platform.is_cuda():
        raise VllmUnavailable(f"{VLLM_REQUIRED} (vLLM found no CUDA GPU here)")
    return _Vllm(AsyncEngineArgs, AsyncLLM, LoRARequest, RequestOutputKind, VllmSamplingParams, TokensPrompt)


@dataclass(frozen=True)
class _Base:
    loop: asyncio.AbstractEventLoop
    engine: Any  # vllm.v1.engine.async_llm.AsyncLLM, whose coroutines run on `loop` only

    def run(self, coroutine: Any) -> Any:
        """Runs a coroutine of the engine on its loop and waits for the result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()


class VllmEngine:
    """`InferenceBackend` on vLLM. Construction only checks that vLLM and a CUDA GPU are there (else raises
    `VllmUnavailable`); each base model's engine starts on its first request."""

    def __init__(self, settings: Settings, registry: BaseModelRegistry, fetch_adapter: FetchAdapter) -> None:
        self._vllm = _import_vllm()
        self._settings = settings
        self._registry = registry
        # vLLM keeps the adapters it loaded in memory; their files are fetched again if the disk cache dropped them.
        self._files = AdapterFiles(
            settings.adapter_cache_dir, fetch_adapter, settings.adapter_disk_cache_megabytes * 1024**2
        )
        self._lora_ids = LoraIds()
        self._bases: dict[str, _Base] = {}
        self._end_ids: dict[str, frozenset[int]] = {}
        self._loading = threading.Lock()

    def tokenizer(self, base_model_id: str) -> PreTrainedTokenizerBase:
        return self._registry.tokenizer(base_model_id)

    def end_of_turn_ids(self, base_model_id: str) -> set[int]:
        ids = self._end_ids.get(base_model_id)
        if ids is None:
            model_dir = self._registry.materialize(base_model_id)
            ids = self._end_ids[base_model_id] = frozenset(end_of_turn_ids_of(model_dir, self.tokenizer(base_model_id)))
        return set(ids)

    def stream_tokens(
        self, base_model_id: str, adapter_name: str | None, prompt_ids: list[int], params: SamplingParams
    ) -> LoopTokenStream:
        vllm = self._vllm
        base = self._base(base_model_id)
        lora = self._lora_request(adapter_name) if adapter_name else None
        sampling = vllm.SamplingParams(
            **vllm_sampling_arguments(params, self.end_of_turn_ids(base_model_id)),
            output_kind=vllm.RequestOutputKind.DELTA,  # each output carries only the tokens new since the last
        )
        prompt = vllm.TokensPrompt(prompt_token_ids=list(prompt_ids))
        request_id = f"loraport-{uuid.uuid4().hex}"

        async def chunks() -> AsyncIterator[list[GeneratedToken]]:
            async for output in base.engine.generate(prompt, sampling, request_id, lora_request=lora):
                new = output.outputs[0]
                yield generated_tokens(list(new.token_ids), new.logprobs, params.logprobs)

        # Cancelling the task also makes vLLM's generate() abort the request; the explicit abort covers a request
        # that its generate() had not yet registered. Aborting an unknown or finished request is a no-op in vLLM.
        return LoopTokenStream(base.loop, chunks, lambda: base.engine.abort(request_id))

    def warm(self, base_model_id: str, adapter_name: str) -> None:
        """Fetch the adapter's files; where its base model's engine runs, load it into vLLM's LoRA cache too."""
        lora = self._lora_request(adapter_name)
        base = self._bases.get(base_model_id)
        if base is not None:
            base.run(base.engine.add_lora(lora))

    def evict(self, adapter_name: str) -> None:
        """Delete the adapter's local files. vLLM drops it from its own caches as least recently used; it is not
        removed there now, since a request still generating with it would fail, and a deleted model's requests are
        refused before they get here."""
        self._files.remove(adapter_name)

    def _lora_request(self, adapter_name: str) -> Any:
        directory = self._files.path(adapter_name)
        rank = adapter_rank(directory)
        if rank > MAX_LORA_RANK:
            raise AdapterRankUnsupported(
                f"The adapter of '{adapter_name}' has LoRA rank {rank}; this server's vLLM backend serves ranks up "
                f"to {MAX_LORA_RANK}"
            )
        return self._vllm.LoRARequest(
            lora_name=adapter_name, lora_int_id=self._lora_ids(adapter_name), lora_path=str(directory)
        )

    def _base(self, base_model_id: str) -> _Base:
        base = self._bases.get(base_model_id)
        if base is None:
            with self._loading:  # one engine start at a time: each takes the GPU memory it finds free
                base = self._bases.get(base_model_id)
                if base is None:
                    base = self._bases[base_model_id] = self._start(base_model_id)
        return base

    def _start(self, base_model_id: str) -> _Base:
        vllm = self._vllm
        arguments = vllm_engine_arguments(self._settings, self._registry.materialize(base_model_id))
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name=f"vllm-{base_model_id}", daemon=True).start()

        async def build() -> Any:  # on its loop: AsyncLLM starts its output handler on the running loop
            return vllm.AsyncLLM.from_engine_args(vllm.AsyncEngineArgs(**arguments))

        try:
            engine = asyncio.run_coroutine_threadsafe(build(), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            raise
        settings = {name: value for name, value in arguments.items() if name != "model"}
        log.info("vllm.engine_started", base_model=base_model_id, **settings)
        return _Base(loop, engine)
