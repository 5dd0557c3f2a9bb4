"""Several processes of each kind on one machine, against the same PostgreSQL, Redis and S3, as a deployment runs
them: two API processes on two ports, two training workers and the maintenance worker. Jobs of several
organisations spread over both workers; a new model is served warm by both API processes; rate limits and an
organisation's cap of requests in progress hold across the API processes, not in each; killing one API process
and one worker mid-work loses nothing, and the others carry on. (The tests run in this order: the last one kills.)"""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from app.cli.embedded.process import free_ports
from app.core.settings import Settings
from app.serving.engine import adapter_directory_name
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.jobs import NO_EVALUATION
from tests.helpers.services import ROOT, new_org_key, settings_env
from tests.helpers.tiny_models import TINY_MODEL_ID
from tests.helpers.waiting import eventually
from tests.helpers.workers import FAST_LEASE, forget_other_jobs, start_maintenance_worker, start_training_worker, stop

RATE_LIMIT = 100  # requests per key per minute, in every API process: one count in Redis
WORKERS = ("first@fleet", "second@fleet")
CHAT = [{"role": "user", "content": "Hello!"}]


@dataclass
class Fleet:
    settings: Settings
    apis: list[str]  # base URLs
    homes: list[Path]  # each API process's LORAPORT_HOME: its adapter cache its own, the converted models shared
    processes: dict[str, subprocess.Popen]

    def client(self, api: int, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.apis[api]}/v1", api_key=key, max_retries=0, timeout=120)


def _api_process(settings: Settings, port: int, home: Path) -> subprocess.Popen:
    (home / "models").symlink_to(settings.model_cache_dir)
    env = settings_env(settings) | {
        "LORAPORT_HOME": str(home),
        "LORAPORT_RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT),
        "LORAPORT_INFERENCE_PER_ORGANIZATION": "1",
    }
    argv = ["-m", "uvicorn", "app.api.main:create_app", "--factory", "--port", str(port), "--log-level", "warning"]
    return subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def fleet(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    forget_other_jobs(settings)
    ports = free_ports(2)
    homes = [tmp_path_factory.mktemp(f"api{i}") for i in range(2)]
    processes = {f"api{i}": _api_process(settings, ports[i], homes[i]) for i in range(2)}
    for name in WORKERS:
        processes[name] = start_training_worker(settings, name=name, **FAST_LEASE)
    schedule = tmp_path_factory.mktemp("beat") / "schedule"
    processes["maintenance"] = start_maintenance_worker(
        settings, schedule, LORAPORT_RECONCILE_INTERVAL_SECONDS="2", **FAST_LEASE
    )
    fleet = Fleet(settings, [f"http://127.0.0.1:{port}" for port in ports], homes, processes)
    try:
        for api in fleet.apis:
            eventually(lambda api=api: _answers(f"{api}/healthz"), timeout=120, what=f"{api} to answer")
        yield fleet
    finally:
        for process in processes.values():
            stop(process)


def _org_key(settings: Settings, name: str) -> str:
    return new_org_key(settings, f"{name}-{uuid.uuid4().hex[:8]}")


def _tiny_job(client: openai.OpenAI, examples: list[tuple[str, str]] = TICKETS, epochs: int = 1) -> str:
    file_id = client.files.create(file=("t.jsonl", chat_jsonl(examples)), purpose="fine-tune").id
    return client.fine_tuning.jobs.create(
        model=TINY_MODEL_ID,
        training_file=file_id,
        hyperparameters={"n_epochs": epochs, "batch_size": 2},
        extra_body=NO_EVALUATION,
    ).id


def _ended(client: openai.OpenAI, job_id: str, timeout: float = 600):
    """The job once it ended, polled every 2 s (the fleet's rate limit is low)."""
    return eventually(
        lambda: (
            (job := client.fine_tuning.jobs.retrieve(job_id)).status in ("succeeded", "failed", "cancelled") and job
        ),
        timeout=timeout,
        interval=2,
        what=f"job {job_id} to end",
    )


def _events(client: openai.OpenAI, job_id: str) -> list:
    """The job's events, oldest first."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))


def _started_by(client: openai.OpenAI, job_id: str) -> list[str]:
    """The workers that started the job, attempt by attempt."""
    return [event.data["worker"] for event in _events(client, job_id) if event.message == "Fine-tuning job started"]


def test_jobs_of_several_organisations_spread_over_both_workers(fleet: Fleet) -> None:
    clients = [fleet.client(i % 2, _org_key(fleet.settings, f"org{i}")) for i in range(3)]
    jobs = [(client, _tiny_job(client)) for client in clients for _ in range(2)]

    ended = [_ended(client, job_id) for client, job_id in jobs]

    assert [job.status for job in ended] == ["succeeded"] * len(jobs)
    workers = {worker for client, job_id in jobs for worker in _started_by(client, job_id)}
    assert workers == set(WORKERS)


def test_a_new_model_is_served_warm_by_both_api_processes(fleet: Fleet) -> None:
    client = fleet.client(0, _org_key(fleet.settings, "warm"))
    job = _ended(client, _tiny_job(client))
    assert job.status == "succeeded" and job.fine_tuned_model
    adapter = adapter_directory_name(f"orgs/{job.organization_id}/adapters/{job.id}")

    for home in fleet.homes:  # the worker announced it, and each API process fetched it before anyone asked
        weights = home / "adapters" / adapter / "adapter_model.safetensors"
        eventually(weights.exists, timeout=60, what=f"the new adapter fetched into {home}")
    for api in range(2):
        reply = fleet.client(api, client.api_key).chat.completions.create(
            model=job.fine_tuned_model, messages=CHAT, max_tokens=2
        )
        assert reply.model == job.fine_tuned_model


def test_a_key_s_rate_limit_is_counted_across_both_api_processes(fleet: Fleet) -> None:
    key = _org_key(fleet.settings, "rate")
    while time.time() % 60 > 40:  # the burst within one minute window of the limit
        time.sleep(1)
    answers = [
        httpx.get(f"{fleet.apis[i % 2]}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        for i in range(RATE_LIMIT + 10)
    ]

    assert [answer.status_code for answer in answers] == [200] * RATE_LIMIT + [429] * 10  # not 2 × the limit


def test_an_organisation_s_requests_in_progress_are_capped_across_both_api_processes(fleet: Fleet) -> None:
    """LORAPORT_INFERENCE_PER_ORGANIZATION=1: while one chat of an organisation streams from one process, its
    chat to the other process is refused, and another organisation's is not."""
    key, other = _org_key(fleet.settings, "cap"), _org_key(fleet.settings, "cap-other")
    base = fleet.settings.default_base_model
    story = [{"role": "user", "content": "Write a long story about a lighthouse keeper, in many paragraphs."}]
    with fleet.client(0, key).chat.completions.create(model=base, messages=story, max_tokens=400, stream=True) as long:
        next(iter(long))  # it runs
        with pytest.raises(openai.RateLimitError) as refused:
            fleet.client(1, key).chat.completions.create(model=base, messages=CHAT, max_tokens=2)
        fleet.client(1, other).chat.completions.create(model=base, messages=CHAT, max_tokens=2)
    assert "across the deployment's API processes" in refused.value.message
    eventually(
        lambda: _chats(fleet.client(1, key), base),
        timeout=60,
        what="the hold given back once the stream closed",
    )


def _chats(client: openai.OpenAI, model: str) -> bool:
    try:
        client.chat.completions.create(model=model, messages=CHAT, max_tokens=2)
    except openai.RateLimitError:
        return False
    return True


def test_killing_an_api_process_and_a_worker_mid_work_loses_nothing(fleet: Fleet) -> None:
    key = _org_key(fleet.settings, "kill")
    through_first, through_second = fleet.client(0, key), fleet.client(1, key)
    job_id = _tiny_job(through_first, TICKETS * 20, epochs=5)  # long enough to be killed mid-way
    running_on = eventually(lambda: _started_by(through_second, job_id), timeout=300, interval=1, what="started")
    eventually(
        lambda: any(event.message.startswith("Checkpoint saved") for event in _events(through_second, job_id)),
        timeout=300,
        interval=1,
        what="its first checkpoint",
    )
    _kill(fleet.processes["api0"])
    _kill(fleet.processes[running_on[0]])

    ended = _ended(through_second, job_id)

    assert ended.status == "succeeded" and ended.fine_tuned_model
    assert _started_by(through_second, job_id) == [running_on[0], _other(running_on[0])]  # resumed on the other
    assert any(event.message.startswith("Resumed from step") for event in _events(through_second, job_id))
    reply = through_second.chat.completions.create(model=ended.fine_tuned_model, messages=CHAT, max_tokens=2)
    assert reply.choices[0].message.content is not None


def _kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def _other(worker: str) -> str:
    return next(name for name in WORKERS if name != worker)
