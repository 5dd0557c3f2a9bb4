"""The inference backend this process uses, as the settings choose it."""

import os

import torch

from app.core.settings import Settings
from app.core.storage import store_for
from app.ml.adapter_manifest import verified_fetch
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.devices import compute_device
from app.serving.backend import InferenceBackend
from app.serving.engine import InferenceEngine
from app.serving.remote import RemoteBackend


def replica_urls(settings: Settings) -> list[str]:
    """`LORAPORT_INFERENCE_REPLICAS` as a list of base URLs (empty: generate in this process)."""
    return [url.strip() for url in settings.inference_replicas.split(",") if url.strip()]


def build_inference_backend(settings: Settings, registry: BaseModelRegistry) -> InferenceBackend:
    """Replicas over HTTP when `LORAPORT_INFERENCE_REPLICAS` names some, else generation in this process."""
    replicas = replica_urls(settings)
    if replicas:
        return RemoteBackend(
            replicas,
            registry,
            token=settings.inference_replica_token,
            timeout_seconds=settings.inference_timeout_seconds,
        )
    return build_local_backend(settings, registry)


def build_local_backend(settings: Settings, registry: BaseModelRegistry) -> InferenceBackend:
    """The backend that runs the model here (a replica always uses this one, whatever its replica setting)."""
    fetch_adapter = verified_fetch(store_for(settings).download_prefix)
    if settings.inference_backend == "vllm":
        from app.serving.vllm_backend import VllmEngine  # needs the `vllm` extra and CUDA: imported on demand

        return VllmEngine(settings, registry, fetch_adapter)
    torch.set_num_threads(generation_threads(settings))
    return InferenceEngine(
        registry,
        fetch_adapter=fetch_adapter,
        cache_dir=settings.adapter_cache_dir,
        max_adapters=settings.adapter_cache_size,
        max_adapter_bytes=settings.adapter_cache_megabytes * 1024**2,
        max_batch_size=settings.inference_concurrency,
        device=compute_device(settings),
        prefill_chunk_tokens=settings.prefill_chunk_tokens,
        max_lora_rank=settings.max_serving_lora_rank,
        request_timeout_s=settings.inference_timeout_seconds,
        max_adapter_disk_bytes=settings.adapter_disk_cache_megabytes * 1024**2,
        rows_per_organization_when_shared=rows_per_organization_when_shared(settings),
    )


def rows_per_organization_when_shared(settings: Settings) -> int:
    """`LORAPORT_INFERENCE_ROWS_PER_ORGANIZATION_WHEN_SHARED`, else by device. On a CPU every row added to a decode
    step slows the step for every row in it (SmolLM2-135M, one thread: 78 ms for one row, 127 for two, 160 for
    nine), so while organisations share the engine each runs one row at a time: another's `n=8` would double a
    chat's time per token. On a GPU rows are nearly free until the batch is large, and half the batch is the cap
    that keeps one organisation from filling it."""
    if settings.inference_rows_per_organization_when_shared:
        return settings.inference_rows_per_organization_when_shared
    return 1 if compute_device(settings) == "cpu" else max(1, settings.inference_concurrency // 2)


def generation_threads(settings: Settings) -> int:
    """`LORAPORT_INFERENCE_THREADS`, else every core this process may use but one.

    The engine shares its process with Python threads that need a core now and then (the API's event loop, the
    streams' readers and detokenizers). torch's threads wait for each other at the end of every operation, so one
    of them descheduled for those stalls them all: on a 2-core machine with 32 streaming clients, 2 threads gave
    45.5 tokens/s over 16 adapters and 1 thread 58.0 (72.1 and 74.1 on one adapter; `bench/serving_load.py`).
    """
    return settings.inference_threads or max(1, len(os.sched_getaffinity(0)) - 1)
