"""QLoRA and GPU memory at job creation: what the training workers reported decides what is refused, and why."""

from collections.abc import Iterator

import openai
import pytest
import redis

from app.core.settings import Settings
from app.core.worker_devices import KEY, Gpu, report, reported
from tests.helpers.datasets import chat_jsonl
from tests.helpers.waiting import eventually
from tests.helpers.workers import forget_other_jobs, start_training_worker, stop

BASE = "smollm2-135m-instruct"
GIB = 2**30


@pytest.fixture
def workers(settings: Settings) -> Iterator[str]:
    """No worker reports but the ones a test makes; the real ones' reports come back afterwards."""
    url = settings.require("redis_url")
    client = redis.Redis.from_url(url)
    saved = client.hgetall(KEY)
    client.delete(KEY)
    yield url
    client.delete(KEY)
    if saved:
        client.hset(KEY, mapping=saved)
    client.close()


@pytest.fixture
def training_file(client: openai.OpenAI) -> str:
    return client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id


def test_qlora_is_refused_when_no_worker_has_a_cuda_gpu(client: openai.OpenAI, workers: str, training_file: str):
    report(workers, "cpu-worker@host", [])
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(
            model=BASE, training_file=training_file, extra_body={"lora": {"quantization": "4bit"}}
        )
    assert error.value.param == "lora.quantization"
    assert "needs a CUDA GPU" in error.value.message and "no training worker here has one" in error.value.message
    plain = client.fine_tuning.jobs.create(model=BASE, training_file=training_file)
    assert plain.lora["quantization"] is None  # type: ignore[attr-defined]
    client.fine_tuning.jobs.cancel(plain.id)


def test_qlora_is_accepted_once_a_gpu_worker_reported(client: openai.OpenAI, workers: str, training_file: str):
    report(workers, "gpu-worker@host", [Gpu("NVIDIA H200", 141 * GIB)])
    job = client.fine_tuning.jobs.create(
        model=BASE, training_file=training_file, extra_body={"lora": {"quantization": "4bit"}}
    )
    assert job.lora["quantization"] == "4bit"  # type: ignore[attr-defined]
    client.fine_tuning.jobs.cancel(job.id)


def test_a_job_too_big_for_every_gpu_is_refused_with_advice(client: openai.OpenAI, workers: str, training_file: str):
    report(workers, "small-gpu@host", [Gpu("small", 8 * GIB)])
    big = {"model": BASE, "training_file": training_file, "hyperparameters": {"batch_size": 64}}
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(**big)  # type: ignore[arg-type]
    assert error.value.code == "insufficient_gpu_memory" and error.value.param == "lora.quantization"
    assert "GiB of GPU memory" in error.value.message and "set lora.quantization to '4bit'" in error.value.message
    with pytest.raises(openai.BadRequestError) as still:
        client.fine_tuning.jobs.create(**big, extra_body={"lora": {"quantization": "4bit"}})  # type: ignore[arg-type]
    assert (
        still.value.param == "hyperparameters.batch_size" and "lower hyperparameters.batch_size" in still.value.message
    )
    small = client.fine_tuning.jobs.create(model=BASE, training_file=training_file, hyperparameters={"batch_size": 1})
    client.fine_tuning.jobs.cancel(small.id)


def test_a_training_worker_reports_its_devices_while_it_runs(settings: Settings, workers: str) -> None:
    forget_other_jobs(settings)  # a job to train would hold the worker past its stop
    process = start_training_worker(settings, name="reporting-worker@test")
    try:

        def has_reported() -> bool:
            assert process.poll() is None, "the worker exited before it reported"
            return "reporting-worker@test" in reported(workers)

        eventually(has_reported, timeout=120, interval=0.5, what="the worker's device report")
        assert reported(workers)["reporting-worker@test"] == []  # this machine has no GPU: it trains on the CPU
    finally:
        stop(process)
    assert "reporting-worker@test" not in reported(workers)  # withdrawn when it stopped
