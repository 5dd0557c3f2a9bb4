"""Mixed traffic against a running Loraport API on loopback, at rising concurrency; latency, errors, nothing lost.

    .venv/bin/python -m bench.api_load [--base-url URL] [--api-key KEY] [--concurrency 1,4,16] [--seconds 20]
        [--chat-share 0.2] [--upload-share 0.2] [--jobs 2] [--json PATH]

Against a server started with `make up` (the URL and key default to what `loraport up` saved). One chat first loads
the model (a start-up cost, not load). Then each virtual client loops for `--seconds` per concurrency level, picking
a request at random: a chat completion of the default base model (`max_tokens` 8) with `--chat-share`, a small
JSONL upload with `--upload-share`, else a read (files list, jobs list, a job, its events: what dashboards and SDK
clients poll). `--jobs` jobs are created first; the worker trains them meanwhile on the same cores, and they are
cancelled at the end. Printed per level and kind: requests, p50 and p99 latency, error rate (any answer but 2xx; a
429 counts apart: it is the rate limit working, so give the key room with LORAPORT_RATE_LIMIT_PER_MINUTE=0).

Then the check that nothing was lost: every upload answered 200 is in the file list, and every job created is in
a terminal state. Bounded in requests and time; loopback only.
"""

import argparse
import asyncio
import json
import random
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx

from app.cli import user_config
from app.cli.remote import DEFAULT_BASE_URL

DATASET = "".join(
    json.dumps(
        {
            "messages": [
                {"role": "user", "content": f"Ticket {i}: refund please"},
                {"role": "assistant", "content": "ok"},
            ]
        }
    )
    + "\n"
    for i in range(20)
).encode()
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    limited: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    uploaded: list[str] = field(default_factory=list)


async def _one(client: httpx.AsyncClient, kind: str, job_ids: list[str], tally: Tally) -> None:
    started = time.perf_counter()
    if kind == "chat":
        body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
        answer = await client.post("/v1/chat/completions", json=body)
    elif kind == "upload":
        files = {"file": ("load.jsonl", DATASET, "application/jsonl")}
        answer = await client.post("/v1/files", files=files, data={"purpose": "fine-tune"})
        if answer.status_code == 200:
            tally.uploaded.append(answer.json()["id"])
    else:
        paths = ["/v1/files", "/v1/fine_tuning/jobs"]
        if job_ids:
            job = random.choice(job_ids)
            paths += [f"/v1/fine_tuning/jobs/{job}", f"/v1/fine_tuning/jobs/{job}/events"]
        path = random.choice(paths)
        answer = await client.get(path)
    tally.latencies[kind].append(time.perf_counter() - started)
    if answer.status_code == 429:
        tally.limited[kind] += 1
    elif not answer.is_success:
        tally.errors[kind] += 1


async def _level(args: argparse.Namespace, concurrency: int, job_ids: list[str], tally: Tally) -> None:
    deadline = time.monotonic() + args.seconds
    weights = {"chat": args.chat_share, "upload": args.upload_share, "read": 1 - args.chat_share - args.upload_share}

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            kind = random.choices(list(weights), list(weights.values()))[0]
            try:
                await _one(client, kind, job_ids, tally)
            except httpx.HTTPError:
                tally.errors[kind] += 1

    async with _client(args) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))


def _client(args: argparse.Namespace) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=256)
    headers = {"Authorization": f"Bearer {args.api_key}"}
    return httpx.AsyncClient(base_url=args.base_url, headers=headers, timeout=120, limits=limits)


async def _create_jobs(args: argparse.Namespace) -> list[str]:
    async with _client(args) as client:
        ids = []
        for _ in range(args.jobs):
            files = {"file": ("jobs.jsonl", DATASET, "application/jsonl")}
            training = (await client.post("/v1/files", files=files, data={"purpose": "fine-tune"})).json()["id"]
            body = {"model": "smollm2-135m-instruct", "training_file": training, "hyperparameters": {"n_epochs": 1}}
            ids.append((await client.post("/v1/fine_tuning/jobs", json=body)).raise_for_status().json()["id"])
        return ids


async def _nothing_lost(args: argparse.Namespace, job_ids: list[str], uploaded: list[str]) -> dict:
    async with _client(args) as client:
        for job in job_ids:
            await client.post(f"/v1/fine_tuning/jobs/{job}/cancel")  # a finished one answers 400: fine
        listed = {row["id"] for row in (await client.get("/v1/files", params={"limit": 10_000})).json()["data"]}
        statuses = [(await client.get(f"/v1/fine_tuning/jobs/{job}")).json()["status"] for job in job_ids]
    return {
        "uploads_accepted": len(uploaded),
        "uploads_missing_from_list": len(set(uploaded) - listed),
        "jobs_created": len(job_ids),
        "jobs_not_terminal": sum(status not in TERMINAL for status in statuses),
    }


def _row(level: int, kind: str, tally: Tally) -> dict:
    latencies = sorted(tally.latencies[kind])
    count = len(latencies)
    return {
        "concurrency": level,
        "kind": kind,
        "requests": count,
        "p50_ms": round(1000 * statistics.median(latencies), 1) if count else None,
        "p99_ms": round(1000 * latencies[min(count - 1, int(0.99 * count))], 1) if count else None,
        "error_rate": round(tally.errors[kind] / count, 4) if count else None,
        "rate_limited": tally.limited[kind],
    }


async def main(args: argparse.Namespace) -> None:
    async with _client(args) as client:  # the first chat loads the base model: a start-up cost, not load
        await _one(client, "chat", [], Tally())
    job_ids = await _create_jobs(args)
    rows, uploaded = [], []
    for level in args.concurrency:
        tally = Tally()
        await _level(args, level, job_ids, tally)
        rows += [_row(level, kind, tally) for kind in ("read", "upload", "chat")]
        uploaded += tally.uploaded
    checks = await _nothing_lost(args, job_ids, uploaded)
    print(f"{'conc':>4} {'kind':<7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'429s':>5}")
    for row in rows:
        print(
            f"{row['concurrency']:>4} {row['kind']:<7} {row['requests']:>8} {row['p50_ms']!s:>8} {row['p99_ms']!s:>8} "
            f"{row['error_rate']!s:>7} {row['rate_limited']:>5}"
        )
    print("nothing lost:", json.dumps(checks))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"levels": rows, "checks": checks, "seconds_per_level": args.seconds}, out, indent=2)


def _arguments() -> argparse.Namespace:
    saved = user_config.load()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=saved.get("base_url", DEFAULT_BASE_URL))
    parser.add_argument("--api-key", default=saved.get("api_key"))
    parser.add_argument("--concurrency", type=lambda text: [int(n) for n in text.split(",")], default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--chat-share", type=float, default=0.2)
    parser.add_argument("--upload-share", type=float, default=0.2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    if not args.api_key:
        parser.error("no API key: pass --api-key, or start the server with `loraport up`, which saves one")
    return args


if __name__ == "__main__":
    asyncio.run(main(_arguments()))
