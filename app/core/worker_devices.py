"""What each training worker can run, as it declares when it starts and renews while it lives: its GPU (none: it
trains on the CPU), whether it has 4-bit kernels (QLoRA), and the base models it may load (None: any). A worker
that stops renewing (killed, or its host lost) drops out after `LIVE_SECONDS`.

Workers claim only the jobs they can run (`app.core.fair_queue`); the reaper tells the owner of a job that no live
worker can run, and fails it after `settings.unrunnable_job_timeout_seconds`. `cannot_run` and `runnable_by` are
the same rule, in Python and in SQL.
"""

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from sqlalchemy import ColumnElement, and_, or_, true

from app.core.redis import redis_client
from app.core.tables import FineTuningJob

_PREFIX = "loraport:worker-capabilities:"  # one key per worker, expiring unless renewed
LIVE_SECONDS = 90
RENEW_SECONDS = 30
GPU_HEADROOM = 0.9  # of a GPU's memory a job may plan to use: allocator fragmentation takes the rest


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int


@dataclass(frozen=True)
class Capabilities:
    gpus: list[Gpu] = field(default_factory=list)  # empty: trains on the CPU
    quantization: bool = False  # 4-bit (bitsandbytes) kernels: CUDA only
    base_models: list[str] | None = None  # None: any base model

    @property
    def cuda(self) -> bool:
        return bool(self.gpus)

    def describe(self) -> str:
        device = ", ".join(f"{gpu.name} ({gpu.memory_bytes / 2**30:.0f} GiB)" for gpu in self.gpus) or "CPU"
        models = f"; base models {', '.join(self.base_models)}" if self.base_models is not None else ""
        return device + (", 4-bit" if self.quantization else "") + models


@dataclass(frozen=True)
class Needs:
    """What a job needs of the worker that runs it, fixed when it is created."""

    base_model: str
    cuda: bool  # QLoRA
    gpu_memory_bytes: int | None  # the estimate, where one was made: a GPU worker must fit it

    @classmethod
    def of(cls, job: FineTuningJob) -> "Needs":
        return cls(job.base_model, job.needs_cuda, job.gpu_memory_bytes)


def cannot_run(worker: Capabilities, needs: Needs) -> str | None:
    """Why `worker` cannot run a job with `needs`; None when it can."""
    if worker.base_models is not None and needs.base_model not in worker.base_models:
        return f"it does not load base model {needs.base_model}"
    if needs.cuda and not (worker.cuda and worker.quantization):
        return "QLoRA needs a CUDA GPU with 4-bit kernels"
    if worker.cuda and needs.gpu_memory_bytes is not None:
        largest = max(gpu.memory_bytes for gpu in worker.gpus)
        if needs.gpu_memory_bytes > GPU_HEADROOM * largest:
            return f"the job needs about {needs.gpu_memory_bytes / 2**30:.1f} GiB of its {largest / 2**30:.0f} GiB GPU"
    return None


def why_none_can_run(needs: Needs, workers: dict[str, Capabilities]) -> str | None:
    """None when a live worker can run the job, or when it needs nothing special and no worker is live yet (any
    worker that starts will do); otherwise why each live worker cannot. Such a job stays queued, told so in its
    events, rather than refused (a GPU worker may be on its way) or failed by a worker that took it."""
    reasons = {name: reason for name, worker in workers.items() if (reason := cannot_run(worker, needs)) is not None}
    if len(reasons) < len(workers) or not (workers or needs.cuda):
        return None
    return "; ".join(f"{name}: {reason}" for name, reason in reasons.items()) or "no training worker is live"


def waiting_message(why: str, needs: Needs, timeout_seconds: float) -> str:
    advice = " Leave lora.quantization out to train at full precision." if needs.cuda else ""
    return (
        f"No live training worker can run this job yet ({why}). It stays queued until one that can is live, and "
        f"fails if none is within {timeout_seconds / 3600:g} h.{advice}"
    )


def runnable_by(worker: Capabilities) -> ColumnElement[bool]:
    """`cannot_run(worker, Needs.of(job)) is None`, as a condition on `fine_tuning_jobs` rows."""
    conditions: list[ColumnElement[bool]] = []
    if worker.base_models is not None:
        conditions.append(FineTuningJob.base_model.in_(worker.base_models))
    if not (worker.cuda and worker.quantization):
        conditions.append(FineTuningJob.needs_cuda.is_(False))
    if worker.cuda:
        largest = max(gpu.memory_bytes for gpu in worker.gpus)
        conditions.append(
            or_(FineTuningJob.gpu_memory_bytes.is_(None), FineTuningJob.gpu_memory_bytes <= GPU_HEADROOM * largest)
        )
    return and_(true(), *conditions)


def report(redis_url: str, worker: str, capabilities: Capabilities) -> None:
    """Declares (or renews) `worker`'s capabilities for the next `LIVE_SECONDS`."""
    with redis_client(redis_url) as client:
        client.set(_PREFIX + worker, json.dumps(asdict(capabilities)), ex=LIVE_SECONDS)


def withdraw(redis_url: str, worker: str) -> None:
    with redis_client(redis_url) as client:
        client.delete(_PREFIX + worker)


def reported(redis_url: str) -> dict[str, Capabilities]:
    """Each live worker's capabilities; empty when no worker is live (or Redis cannot say)."""
    try:
        with redis_client(redis_url) as client:
            names = sorted(client.scan_iter(match=_PREFIX + "*", count=500))
            values = client.mget(names) if names else []
    except redis.RedisError:
        return {}
    return {
        name.decode().removeprefix(_PREFIX): _capabilities(json.loads(value))
        for name, value in zip(names, values, strict=True)
        if value is not None
    }


def _capabilities(fields: dict[str, Any]) -> Capabilities:
    return Capabilities([Gpu(**gpu) for gpu in fields["gpus"]], fields["quantization"], fields["base_models"])
