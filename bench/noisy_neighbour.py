"""Organisation B's small chats and one job, alone and then beside organisation A's abuse, on a running `make up`.

    .venv/bin/python -m bench.noisy_neighbour [--base-url URL] [--seconds 60] [--upload-mb 1000] [--json PATH]

Two organisations are made with `loraport keys create` (the same database `make up` runs). In each phase B sends
small chats one after another (the default base model, `max_tokens` 8) from a process of its own, as another client
would, and, a few seconds in, creates one training job of one epoch; the phase lasts `--seconds`, or until B's job
has taken its first step. A's bodies are made before the phase starts.

The quiet phase is B alone. In the noisy phase organisation A, at the same moment:
- sends unauthenticated 64 MiB `text/plain` bodies to /v1/chat/completions;
- sends prompts beyond the model's context;
- sends stop strings of 100k characters, and n=8 streams;
- creates 20 jobs;
- starts an evaluation of a large file;
- uploads `--upload-mb` MB.

Printed: B's chat p50/p99 in each phase and their ratio (target: p99 within 2x), the time from B's job creation to
its first step and how many of A's jobs had finished by then (target: B starts before A's 20 are done), the API
process's peak resident memory in each phase, and every answer A got by kind (each abuse must get its clear 4xx).
Nothing of B's may be lost: all its chats answered 200, its job reached a step. A's and B's work is cancelled at
the end. Loopback only; the API process is found by its command line to read its memory.
"""

import argparse
import asyncio
import io
import json
import multiprocessing
import multiprocessing.synchronize
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from pathlib import Path

import httpx

from app.cli import user_config
from app.cli.remote import DEFAULT_BASE_URL

MODEL = "smollm2-135m-instruct"
SMALL_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}
MIB = 1024**2


def _dataset(lines: int, words: int = 1) -> bytes:
    return "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Ticket {i}: {'refund please ' * words}"},
                    {"role": "assistant", "content": f"category: billing {i % 7}"},
                ]
            }
        )
        + "\n"
        for i in range(lines)
    ).encode()


@dataclass
class Phase:
    chat_seconds: list[float] = field(default_factory=list)
    chat_started: list[float] = field(default_factory=list)  # seconds into the phase, one per answered chat
    chat_failures: Counter[int | str] = field(default_factory=Counter)
    job_start_seconds: float | None = None
    a_jobs_finished_at_b_start: int | None = None
    api_peak_rss_mb: float = 0.0
    abuse: dict[str, Counter[int | str]] = field(default_factory=lambda: defaultdict(Counter))


def _new_key(org: str) -> str:
    """A key for a new organisation, from the CLI, against the database `make up` runs."""
    printed = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "keys", "create", "--org", org, "--name", "bench"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"lp_\S+", printed)
    if match is None:
        raise RuntimeError(f"`loraport keys create` printed no key: {printed}")
    return match.group(0)


def _api_pid() -> int | None:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"uvicorn" in argv and b"app.api.main:create_app" in argv:
            return int(cmdline.parent.name)
    return None


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _watch_memory(pid: int | None, phase: Phase, stop: asyncio.Event) -> None:
    while pid is not None and not stop.is_set():
        phase.api_peak_rss_mb = max(phase.api_peak_rss_mb, _rss_mb(pid))
        await asyncio.sleep(0.2)


def _client(base_url: str, key: str | None, timeout: float = 120) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=timeout, limits=httpx.Limits(max_connections=64)
    )


async def _upload(client: httpx.AsyncClient, content: bytes | io.RawIOBase, name: str) -> httpx.Response:
    files = {"file": (name, content, "application/jsonl")}
    return await client.post("/v1/files", files=files, data={"purpose": "fine-tune"}, timeout=600)


async def _create_job(client: httpx.AsyncClient, training_file: str) -> httpx.Response:
    body = {"model": MODEL, "training_file": training_file, "hyperparameters": {"n_epochs": 1}}
    return await client.post("/v1/fine_tuning/jobs", json=body)


@dataclass
class _Chats:
    """What B's chat process sends back at the end of a phase."""

    seconds: list[float] = field(default_factory=list)
    started: list[float] = field(default_factory=list)
    failures: Counter[int | str] = field(default_factory=Counter)


def _b_chat_process(
    base_url: str, key: str, phase_started: float, stop: "multiprocessing.synchronize.Event", results: "Queue[_Chats]"
) -> None:
    """B's small chats one after another until `stop`, in a process of its own: B is another client, so A's client
    (building its payloads, streaming its gigabyte) must not delay B's requests or the reading of their answers."""

    async def chats() -> _Chats:
        done = _Chats()
        async with _client(base_url, key) as client:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    answer = await client.post("/v1/chat/completions", json=SMALL_CHAT)
                    if answer.status_code == 200:
                        done.seconds.append(time.perf_counter() - started)
                        done.started.append(time.time() - (time.perf_counter() - started) - phase_started)
                    else:
                        done.failures[answer.status_code] += 1
                except httpx.HTTPError as error:
                    done.failures[type(error).__name__] += 1
                await asyncio.sleep(0.1)
        return done

    results.put(asyncio.run(chats()))


async def _b_chats(base_url: str, key: str, phase: Phase, stop: asyncio.Event) -> None:
    context = multiprocessing.get_context("spawn")
    stop_chats, results = context.Event(), context.Queue()
    arguments = (base_url, key, time.time(), stop_chats, results)  # wall-clock: the phase's start, for `started`
    process = context.Process(target=_b_chat_process, args=arguments, daemon=True)
    process.start()
    await stop.wait()
    stop_chats.set()
    done = await asyncio.to_thread(results.get)
    await asyncio.to_thread(process.join)
    phase.chat_seconds, phase.chat_started, phase.chat_failures = done.seconds, done.started, done.failures


async def _first_step(client: httpx.AsyncClient, job_id: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        events = (await client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100})).json()
        if any(event.get("type") == "metrics" for event in events.get("data", [])):
            return True
        await asyncio.sleep(0.5)
    return False


async def _repeat(kind: str, phase: Phase, stop: asyncio.Event, send: Callable[[], Awaitable[httpx.Response]]) -> None:
    while not stop.is_set():
        try:
            phase.abuse[kind][(await send()).status_code] += 1
        except httpx.HTTPError as error:  # the server may close the connection once it has refused a body
            phase.abuse[kind][type(error).__name__] += 1
        await asyncio.sleep(0.5)


async def _zeros(total: int) -> AsyncIterator[bytes]:
    chunk = b"\0" * MIB
    for _ in range(total // MIB):
        yield chunk


class _RepeatedJsonl(io.RawIOBase):
    """`total_bytes` of valid examples, made as they are read: a 1 GB upload without 1 GB in memory or on disk."""

    def __init__(self, total_bytes: int) -> None:
        self.block = _dataset(2000, words=4)
        self.left = max(1, total_bytes // len(self.block)) * len(self.block)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        offset = (len(self.block) - self.left % len(self.block)) % len(self.block)
        size = len(self.block) - offset if size < 0 else min(size, len(self.block) - offset)
        chunk = self.block[offset : offset + min(size, self.left)]
        self.left -= len(chunk)
        return chunk


@dataclass(frozen=True)
class _Payloads:
    """A's bodies, made before the clock starts: the client's own work must not be counted as the server's."""

    huge_prompt: bytes
    long_stops: bytes
    small_file: bytes
    large_file: bytes

    @classmethod
    def make(cls) -> "_Payloads":
        return cls(
            huge_prompt=json.dumps(
                {"model": MODEL, "messages": [{"role": "user", "content": "hello world " * 690_000}]}
            ).encode(),
            long_stops=json.dumps({**SMALL_CHAT, "stop": ["x" * 100_000] * 4}).encode(),
            small_file=_dataset(20),
            large_file=_dataset(200_000, words=8),
        )


async def _a_abuse(
    base_url: str, key: str, phase: Phase, stop: asyncio.Event, upload_mb: int, payloads: _Payloads
) -> list[str]:
    """A's abuse, all at once; returns the paths that cancel A's jobs (to count how many finished before B's job
    started) and its evaluation."""
    anonymous, a = _client(base_url, None), _client(base_url, key, timeout=600)
    json_body = {"Content-Type": "application/json"}
    wide_stream = {**SMALL_CHAT, "n": 8, "stream": True, "max_tokens": 64}
    tasks = [
        _repeat(
            "unauthenticated 64 MiB text/plain",
            phase,
            stop,
            lambda: anonymous.post(
                "/v1/chat/completions", content=_zeros(64 * MIB), headers={"Content-Type": "text/plain"}
            ),
        ),
        _repeat(
            "prompt beyond the context",
            phase,
            stop,
            lambda: a.post("/v1/chat/completions", content=payloads.huge_prompt, headers=json_body),
        ),
        _repeat(
            "stop strings of 100k characters",
            phase,
            stop,
            lambda: a.post("/v1/chat/completions", content=payloads.long_stops, headers=json_body),
        ),
        _repeat("n=8 stream", phase, stop, lambda: a.post("/v1/chat/completions", json=wide_stream)),
    ]
    running = [asyncio.create_task(task) for task in tasks]
    small = (await _upload(a, payloads.small_file, "a.jsonl")).json()["id"]
    work = []
    for _ in range(20):
        answer = await _create_job(a, small)
        phase.abuse["20 jobs"][answer.status_code] += 1
        if answer.status_code == 200:
            work.append(f"/v1/fine_tuning/jobs/{answer.json()['id']}")
    large = await _upload(a, payloads.large_file, "large.jsonl")
    phase.abuse["large file for an evaluation"][large.status_code] += 1
    if large.status_code == 200:
        evaluation = await a.post("/v1/evaluations", json={"model": MODEL, "file": large.json()["id"]})
        phase.abuse["evaluation of the large file"][evaluation.status_code] += 1
        if evaluation.status_code == 200:
            work.append(f"/v1/evaluations/{evaluation.json()['id']}")
    gigabyte = await _upload(a, _RepeatedJsonl(upload_mb * 1_000_000), "gigabyte.jsonl")
    phase.abuse[f"{upload_mb} MB upload"][gigabyte.status_code] += 1
    await stop.wait()
    await asyncio.gather(*running)
    await anonymous.aclose()
    await a.aclose()
    return work


async def _phase(args: argparse.Namespace, b_key: str, a_key: str | None, payloads: _Payloads | None = None) -> Phase:
    phase, stop = Phase(), asyncio.Event()
    b = _client(args.base_url, b_key)
    watch = asyncio.create_task(_watch_memory(_api_pid(), phase, stop))
    chats = asyncio.create_task(_b_chats(args.base_url, b_key, phase, stop))
    abuse = (
        asyncio.create_task(_a_abuse(args.base_url, a_key, phase, stop, args.upload_mb, payloads))
        if a_key and payloads
        else None
    )
    started = time.monotonic()
    training_file = (await _upload(b, _dataset(20), "b.jsonl")).raise_for_status().json()["id"]
    await asyncio.sleep(5)  # A's jobs are queued first
    created = time.monotonic()
    job_id = (await _create_job(b, training_file)).raise_for_status().json()["id"]
    if await _first_step(b, job_id, created + args.job_timeout):
        phase.job_start_seconds = time.monotonic() - created
    await asyncio.sleep(max(0.0, args.seconds - (time.monotonic() - started)))
    stop.set()
    await b.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    await asyncio.gather(chats, watch)
    if abuse is not None:
        a_work = await abuse
        async with _client(args.base_url, a_key) as a:
            jobs = [path for path in a_work if path.startswith("/v1/fine_tuning/")]
            statuses = [(await a.get(job)).json()["status"] for job in jobs]
            phase.a_jobs_finished_at_b_start = sum(status == "succeeded" for status in statuses)
            for path in a_work:  # so that the next run starts on an idle worker
                await a.post(f"{path}/cancel")
    await b.aclose()
    return phase


def _percentile(values: list[float], share: float) -> float | None:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1) if ordered else None


def _summary(phase: Phase) -> dict:
    return {
        "b_chats": len(phase.chat_seconds),
        "b_chat_failures": dict(phase.chat_failures),
        "b_chat_p50_ms": round(1000 * statistics.median(phase.chat_seconds), 1) if phase.chat_seconds else None,
        "b_chat_p99_ms": _percentile(phase.chat_seconds, 0.99),
        "b_slowest_chats": [  # [seconds into the phase, milliseconds]: when the tail happened
            [round(at, 1), round(1000 * seconds)]
            for seconds, at in sorted(zip(phase.chat_seconds, phase.chat_started, strict=True), reverse=True)[:5]
        ],
        "b_job_start_seconds": round(phase.job_start_seconds, 1) if phase.job_start_seconds else None,
        "a_jobs_finished_when_b_phase_ended": phase.a_jobs_finished_at_b_start,
        "api_peak_rss_mb": round(phase.api_peak_rss_mb),
        "a_answers": {kind: dict(counts) for kind, counts in phase.abuse.items()},
    }


async def main(args: argparse.Namespace) -> None:
    run = uuid.uuid4().hex[:6]
    b_key, a_key = _new_key(f"bench-b-{run}"), _new_key(f"bench-a-{run}")
    async with _client(args.base_url, b_key) as b:  # the first chat loads the model: a start-up cost
        (await b.post("/v1/chat/completions", json=SMALL_CHAT)).raise_for_status()
    quiet = _summary(await _phase(args, b_key, None))
    noisy = _summary(await _phase(args, b_key, a_key, _Payloads.make()))
    ratio = (
        noisy["b_chat_p99_ms"] / quiet["b_chat_p99_ms"] if quiet["b_chat_p99_ms"] and noisy["b_chat_p99_ms"] else None
    )
    result = {"quiet": quiet, "noisy": noisy, "b_p99_noisy_over_quiet": round(ratio, 2) if ratio else None}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def _arguments() -> argparse.Namespace:
    saved = user_config.load()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=saved.get("base_url", DEFAULT_BASE_URL).removesuffix("/v1"))
    parser.add_argument("--seconds", type=float, default=60.0, help="the least each phase lasts")
    parser.add_argument("--job-timeout", type=float, default=600.0, help="the longest to wait for B's first step")
    parser.add_argument("--upload-mb", type=int, default=1000)
    parser.add_argument("--json")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_arguments()))
