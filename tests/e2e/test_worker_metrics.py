"""A training worker's metrics on its own port (LORAPORT_WORKER_METRICS_PORT), as Prometheus scrapes them after a
tiny job: its steps, tokens and the job it finished; then the API's adapter cache as the job's model is served."""

import subprocess
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from app.cli.embedded.process import free_ports
from app.core.settings import Settings
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.jobs import NO_EVALUATION, wait_for_job
from tests.helpers.tiny_models import TINY_MODEL_ID
from tests.helpers.waiting import eventually
from tests.helpers.workers import forget_other_jobs, start_training_worker, stop


@pytest.fixture(scope="module")
def worker_metrics(settings: Settings) -> Iterator[str]:
    """A training worker serving its metrics; their URL."""
    forget_other_jobs(settings)
    port = free_ports(1)[0]
    process: subprocess.Popen = start_training_worker(settings, LORAPORT_WORKER_METRICS_PORT=str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        eventually(lambda: _answers(url), timeout=120, what="the worker's metrics endpoint")
        yield url
    finally:
        stop(process)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(url, timeout=30).raise_for_status().text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_worker_shows_its_training_steps_and_the_job_it_finished(worker_metrics: str, client: openai.OpenAI) -> None:
    training = client.files.create(file=("tickets.jsonl", chat_jsonl(TICKETS)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL_ID,
        training_file=training.id,
        hyperparameters={"n_epochs": 1, "batch_size": 4},
        extra_body=NO_EVALUATION,
    )
    finished = wait_for_job(client, job.id)
    assert finished.status == "succeeded", finished.error

    samples = scrape(worker_metrics)
    steps = samples[("loraport_training_step_seconds_count", frozenset())]
    assert steps >= 1
    assert samples[("loraport_training_tokens_total", frozenset())] > 0
    assert samples[("loraport_training_tokens_per_second", frozenset())] > 0
    succeeded = frozenset({("kind", "job"), ("status", "succeeded")})
    assert samples[("loraport_work_finished_total", succeeded)] == 1

    # The API (in this process) serves the model: its adapter is loaded once (unless the announcement of the worker
    # had it loaded already), and found in memory after.
    def counted(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    names = (
        "loraport_adapter_cache_misses_total",
        "loraport_adapter_cache_hits_total",
        "loraport_adapter_load_seconds_count",
    )
    before = [counted(name) for name in names]
    for _ in range(2):
        client.chat.completions.create(
            model=finished.fine_tuned_model or "", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    misses, hits, loads = (counted(name) - was for name, was in zip(names, before, strict=True))
    assert misses + hits == 2 and hits >= 1
    assert loads == misses
