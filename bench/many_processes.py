"""One process of each kind against two, side by side in one run, on this machine: the same work from three
organisations (two one-epoch jobs each on the default base model, and chats sent one after another by each) on

- one API process and one training worker, then
- two API processes on two ports and two training workers,

each with the maintenance worker, against the same PostgreSQL, Redis and S3 (embedded ones in a fresh home, as
`make up` starts them, unless LORAPORT_* URLs name others).

    .venv/bin/python -m bench.many_processes [--jobs-per-org 2] [--chats-per-org 20] [--json PATH]

Printed per layout: the wall time from the first job created to the last one ended, which workers ran the jobs, the
chats per second and their p50/p99 latency, and what was lost (any job not succeeded, any chat not answered 200);
then the two layouts' ratios. Chats go round-robin over the API processes, as a load balancer would send them.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from app.cli.embedded.process import free_ports
from app.cli.embedded.services import embedded_services
from app.core.bootstrap import prepare
from app.core.db import transaction
from app.core.keys import get_or_create_org, issue_key
from app.core.settings import Settings
from bench.tickets import all_tickets

MODEL = "smollm2-135m-instruct"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}
ORGS = 3


@dataclass
class Layout:
    name: str
    api_processes: int
    training_workers: int
    jobs_seconds: float = 0.0
    workers_used: tuple[str, ...] = ()
    chats_per_second: float = 0.0
    chat_p50_s: float = 0.0
    chat_p99_s: float = 0.0
    jobs_not_succeeded: int = 0
    chats_not_answered: int = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs-per-org", type=int, default=2)
    parser.add_argument("--chats-per-org", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    layouts = [Layout("one of each", 1, 1), Layout("two of each", 2, 2)]
    with tempfile.TemporaryDirectory(prefix="loraport-bench-") as home:
        settings = Settings(home=Path(home))
        with embedded_services(settings) as embedded:
            prepare(embedded.settings)
            for layout in layouts:
                with _running(embedded.settings, layout, Path(home) / layout.name.replace(" ", "-")) as apis:
                    _measure(embedded.settings, apis, layout, args.jobs_per_org, args.chats_per_org)
                _print(layout)
    one, two = layouts
    print(f"two of each / one of each: jobs wall {two.jobs_seconds / one.jobs_seconds:.2f}×, "
          f"chats per second {two.chats_per_second / one.chats_per_second:.2f}×")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps([asdict(layout) for layout in layouts], indent=2) + "\n")


@contextmanager
def _running(settings: Settings, layout: Layout, logs: Path) -> Iterator[list[str]]:
    """The layout's processes (and the maintenance worker) until the block ends; the API processes' URLs."""
    logs.mkdir(parents=True)
    # The machine's cores shared by the training workers, as a CPU host should be set up: more threads than cores
    # (every worker taking them all) slows every one of them down.
    threads = max(1, len(os.sched_getaffinity(0)) // layout.training_workers)
    env = {**os.environ, **settings.as_environment(), "PYTHONUNBUFFERED": "1", "LORAPORT_TORCH_THREADS": str(threads)}
    ports = free_ports(layout.api_processes)
    argvs = [
        ["-m", "uvicorn", "app.api.main:create_app", "--factory", "--port", str(port), "--log-level", "warning"]
        for port in ports
    ] + [
        ["-m", "celery", "-A", "worker.celery.training", "worker", "--queues", "training", "--pool", "solo",
         "--hostname", f"worker{i}@{layout.name.replace(' ', '-')}", "--loglevel", "WARNING"]
        for i in range(layout.training_workers)
    ] + [
        ["-m", "celery", "-A", "worker.celery.maintenance", "worker", "--queues", "maintenance", "--pool", "solo",
         "--beat", "--schedule", str(logs / "beat"), "--loglevel", "WARNING"]
    ]  # fmt: skip
    processes = [_start(argv, env, logs / f"{i}.log") for i, argv in enumerate(argvs)]
    apis = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for api in apis:
            _wait(lambda api=api: _answers(f"{api}/healthz"), 180)
        yield apis
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as output:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, *argv], env=env, stdout=output, stderr=subprocess.STDOUT)


def _measure(settings: Settings, apis: list[str], layout: Layout, jobs_per_org: int, chats_per_org: int) -> None:
    keys = _org_keys(settings, ORGS)
    for api in apis:  # the base model in memory everywhere before the clock starts, as in a running deployment
        httpx.post(f"{api}/v1/chat/completions", json=CHAT, headers=_auth(keys[0]), timeout=300).raise_for_status()
    latencies: list[float] = []
    failures: list[int] = []
    finished: list[float] = []  # when each organisation's last chat was answered
    chatters = [
        threading.Thread(target=_chat, args=(apis, key, chats_per_org, latencies, failures, finished)) for key in keys
    ]
    started = time.monotonic()
    jobs = [(key, _create_job(apis[i % len(apis)], key)) for i, key in enumerate(keys * jobs_per_org)]
    for chatter in chatters:  # beside the training, as a deployment serves while it trains
        chatter.start()
    ended = [_wait_for_job(apis[0], key, job_id) for key, job_id in jobs]
    layout.jobs_seconds = time.monotonic() - started
    for chatter in chatters:
        chatter.join()
    chatting = max(finished) - started
    layout.workers_used = tuple(sorted({worker for job in ended for worker in job["workers"]}))
    layout.jobs_not_succeeded = sum(job["status"] != "succeeded" for job in ended)
    layout.chats_per_second = len(latencies) / chatting
    layout.chat_p50_s = statistics.median(latencies)
    layout.chat_p99_s = statistics.quantiles(latencies, n=100)[98]
    layout.chats_not_answered = len(failures)


def _org_keys(settings: Settings, count: int) -> list[str]:
    with transaction(settings.require("database_url")) as session:
        return [
            issue_key(session, get_or_create_org(session, f"bench-{uuid.uuid4().hex[:8]}")).plaintext
            for _ in range(count)
        ]


def _create_job(api: str, key: str) -> str:
    lines = "".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
        for q, a in all_tickets()[:16]
    )
    uploaded = httpx.post(
        f"{api}/v1/files", headers=_auth(key), files={"file": ("t.jsonl", lines)}, data={"purpose": "fine-tune"},
        timeout=120,
    ).raise_for_status().json()  # fmt: skip
    body = {
        "model": MODEL,
        "training_file": uploaded["id"],
        "hyperparameters": {"n_epochs": 1, "batch_size": 8},
        "evaluation": {"max_examples": 0},
    }
    return (
        httpx.post(f"{api}/v1/fine_tuning/jobs", json=body, headers=_auth(key), timeout=120)
        .raise_for_status()
        .json()["id"]
    )


def _wait_for_job(api: str, key: str, job_id: str) -> dict:
    """The job's status once ended, and the workers that started it."""
    while True:
        job = httpx.get(f"{api}/v1/fine_tuning/jobs/{job_id}", headers=_auth(key), timeout=60).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1)
    events = httpx.get(
        f"{api}/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}, headers=_auth(key), timeout=60
    ).json()["data"]
    workers = [event["data"]["worker"] for event in events if event["message"] == "Fine-tuning job started"]
    return {"status": job["status"], "workers": workers}


def _chat(
    apis: list[str], key: str, count: int, latencies: list[float], failures: list[int], finished: list[float]
) -> None:
    for i in range(count):
        sent = time.monotonic()
        try:
            answer = httpx.post(
                f"{apis[i % len(apis)]}/v1/chat/completions", json=CHAT, headers=_auth(key), timeout=300
            )
            status = answer.status_code
        except httpx.TransportError:
            status = 0
        if status == 200:
            latencies.append(time.monotonic() - sent)
        else:
            failures.append(status)
    finished.append(time.monotonic())


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _wait(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("a process did not start")
        time.sleep(0.5)


def _print(layout: Layout) -> None:
    print(
        f"{layout.name}: {layout.api_processes} API, {layout.training_workers} workers | "
        f"jobs {layout.jobs_seconds:.1f} s "
        f"on {', '.join(layout.workers_used)} | chats {layout.chats_per_second:.2f}/s, p50 {layout.chat_p50_s:.2f} s, "
        f"p99 {layout.chat_p99_s:.2f} s | lost: {layout.jobs_not_succeeded} jobs, {layout.chats_not_answered} chats",
        flush=True,
    )


if __name__ == "__main__":
    main()
