"""Jobs routed to the training workers that can run them: what the live workers declare decides who claims what; a
job no live worker can run (QLoRA without a CUDA worker, too big for every GPU, a base model no worker loads) stays
queued and is told why, is told again when a worker that can run it is live, and fails after a set time."""

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import redis

from app.core.settings import Settings
from app.core.worker_devices import Capabilities, Gpu, report, reported
from tests.helpers.datasets import chat_jsonl
from tests.helpers.jobs import NO_EVALUATION, wait_for_job
from tests.helpers.tiny_models import TINY_MODEL_ID
from tests.helpers.waiting import eventually
from tests.helpers.workers import FAST_LEASE, forget_other_jobs, start_maintenance_worker, start_training_worker, stop
from worker.unrunnable_jobs import tell_unrunnable_jobs

BASE = "smollm2-135m-instruct"
GIB = 2**30
QLORA = {"lora": {"quantization": "4bit"}}
WAITING = "No live training worker can run this job yet"


@pytest.fixture
def workers(settings: Settings) -> Iterator[str]:
    """No worker is live but the ones a test declares (real workers of other modules declare again within 30 s)."""
    url = settings.require("redis_url")

    def forget() -> None:
        with redis.Redis.from_url(url) as client:
            for key in client.scan_iter(match="loraport:worker-capabilities:*"):
                client.delete(key)

    forget()
    yield url
    forget()


@pytest.fixture
def training_file(client: openai.OpenAI) -> str:
    return client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id


def events(client: openai.OpenAI, job_id: str) -> list:
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))


def codes(client: openai.OpenAI, job_id: str) -> list[str]:
    """The codes of the events that said whether a live worker can run the job."""
    said = [event.data.get("code") for event in events(client, job_id) if event.data]
    return [code for code in said if code in ("waiting_for_worker", "worker_available")]


def test_qlora_with_only_cpu_workers_waits_told_why_then_fails(
    client: openai.OpenAI, settings: Settings, workers: str, training_file: str
) -> None:
    forget_other_jobs(settings)
    report(workers, "cpu-worker@host", Capabilities())
    job = client.fine_tuning.jobs.create(model=BASE, training_file=training_file, extra_body=QLORA)
    plain = client.fine_tuning.jobs.create(model=BASE, training_file=training_file)

    told = next(event for event in events(client, job.id) if event.message.startswith(WAITING))
    assert job.status == "queued" and told.level == "warn"
    assert "cpu-worker@host: QLoRA needs a CUDA GPU with 4-bit kernels" in told.message
    assert "Leave lora.quantization out" in told.message
    assert codes(client, plain.id) == []  # the CPU worker can run it

    tell_unrunnable_jobs(settings)  # within the time limit: told once, still queued
    assert codes(client, job.id) == ["waiting_for_worker"]
    soon = settings.model_copy(update={"unrunnable_job_timeout_seconds": 0.5})
    failed = eventually(lambda: job.id in tell_unrunnable_jobs(soon), timeout=10, what="the job failed")

    ended = client.fine_tuning.jobs.retrieve(job.id)
    assert failed and ended.status == "failed" and ended.error.code == "no_capable_worker"  # type: ignore[union-attr]
    assert "cpu-worker@host: QLoRA needs a CUDA GPU" in ended.error.message  # type: ignore[union-attr]
    assert client.fine_tuning.jobs.retrieve(plain.id).status == "queued"
    client.fine_tuning.jobs.cancel(plain.id)


def test_a_job_waiting_for_a_gpu_is_told_when_one_is_live(
    client: openai.OpenAI, settings: Settings, workers: str, training_file: str
) -> None:
    forget_other_jobs(settings)
    job = client.fine_tuning.jobs.create(model=BASE, training_file=training_file, extra_body=QLORA)
    assert "(no training worker is live)" in next(e.message for e in events(client, job.id) if e.level == "warn")

    report(workers, "gpu-worker@host", Capabilities([Gpu("NVIDIA H200", 141 * GIB)], quantization=True))
    tell_unrunnable_jobs(settings)
    tell_unrunnable_jobs(settings)  # told once, not at every pass

    assert codes(client, job.id) == ["waiting_for_worker", "worker_available"]
    assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"
    client.fine_tuning.jobs.cancel(job.id)


def test_a_job_too_big_for_every_live_gpu_waits_with_its_estimate(
    client: openai.OpenAI, workers: str, training_file: str
) -> None:
    report(workers, "small-gpu@host", Capabilities([Gpu("small", 8 * GIB)], quantization=True))
    big = client.fine_tuning.jobs.create(model=BASE, training_file=training_file, hyperparameters={"batch_size": 64})
    small = client.fine_tuning.jobs.create(model=BASE, training_file=training_file, hyperparameters={"batch_size": 1})

    told = next(event.message for event in events(client, big.id) if event.message.startswith(WAITING))
    assert "small-gpu@host: the job needs about" in told and "GiB of its 8 GiB GPU" in told
    assert codes(client, small.id) == []
    for job in (big, small):
        client.fine_tuning.jobs.cancel(job.id)


def test_a_training_worker_declares_what_it_can_run_while_it_runs(settings: Settings, workers: str) -> None:
    forget_other_jobs(settings)  # a job to train would hold the worker past its stop
    process = start_training_worker(
        settings, name="declaring-worker@test", LORAPORT_WORKER_BASE_MODELS=json.dumps([TINY_MODEL_ID])
    )
    try:

        def has_declared() -> bool:
            assert process.poll() is None, "the worker exited before it declared"
            return "declaring-worker@test" in reported(workers)

        eventually(has_declared, timeout=120, interval=0.5, what="the worker's declaration")
        # this machine has no GPU: it trains on the CPU, without 4-bit kernels
        assert reported(workers)["declaring-worker@test"] == Capabilities(base_models=[TINY_MODEL_ID])
    finally:
        stop(process)
    assert "declaring-worker@test" not in reported(workers)  # withdrawn when it stopped


@pytest.fixture
def two_workers(settings: Settings, workers: str, tmp_path: Path) -> Iterator[None]:
    """Two real training workers that declare different base models, and the maintenance worker (reaper every
    2 s, jobs no worker can run failed after 20 s)."""
    forget_other_jobs(settings)
    processes: list[subprocess.Popen] = [
        start_training_worker(settings, name=name, LORAPORT_WORKER_BASE_MODELS=json.dumps([model]))
        for name, model in (("tiny@test", TINY_MODEL_ID), ("other@test", BASE))
    ]
    processes.append(
        start_maintenance_worker(
            settings, tmp_path / "beat", LORAPORT_RECONCILE_INTERVAL_SECONDS="2",
            LORAPORT_UNRUNNABLE_JOB_TIMEOUT_SECONDS="20", **FAST_LEASE,
        )
    )  # fmt: skip
    eventually(lambda: {"tiny@test", "other@test"} <= set(reported(workers)), timeout=120, what="both declared")
    yield
    for process in processes:
        stop(process)


def test_two_workers_take_only_the_jobs_they_can_run(client: openai.OpenAI, two_workers: None) -> None:
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    tiny = [
        client.fine_tuning.jobs.create(
            model=TINY_MODEL_ID, training_file=file_id, hyperparameters={"n_epochs": 1}, extra_body=NO_EVALUATION
        ).id
        for _ in range(3)
    ]
    qlora = client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=file_id, extra_body=QLORA).id

    ended = [wait_for_job(client, job_id, timeout_s=300) for job_id in [*tiny, qlora]]

    assert [job.status for job in ended] == ["succeeded"] * 3 + ["failed"]
    started = [e for job_id in tiny for e in events(client, job_id) if e.message == "Fine-tuning job started"]
    assert [event.data["worker"] for event in started] == ["tiny@test"] * 3  # the other one never took them
    assert ended[-1].error.code == "no_capable_worker"  # type: ignore[union-attr]
    told = next(e.message for e in events(client, qlora) if e.message.startswith(WAITING))
    assert (
        "tiny@test: QLoRA needs a CUDA GPU" in told
        and f"other@test: it does not load base model {TINY_MODEL_ID}" in told
    )
