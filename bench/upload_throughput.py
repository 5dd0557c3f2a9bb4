"""Upload throughput and memory: our streaming ingest against the naive recipe, side by side in one run.

    .venv/bin/python -m bench.upload_throughput [--sizes-mb 10 100 1000]

Needs the test services (PostgreSQL on 127.0.0.1:5432, database `test`); starts its own SeaweedFS.
Reports, per size: the naive way (read the whole file, `json.loads` every line, one PUT) and our
ingest (stream, hash, validate, multipart PUT) in MB/s and their ratio, then an HTTP upload through
the real API with the API process's peak RSS, which must not grow with the file size.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil
import psycopg

from app.api.files.ingest import FileIngest
from app.cli.embedded.process import free_ports
from app.cli.embedded.seaweed import SeaweedS3
from app.core.bootstrap import prepare
from app.core.db import transaction
from app.core.keys import get_or_create_org, issue_key
from app.core.settings import Settings
from app.core.storage import store_for
from app.ml.datasets.validation import DatasetValidator

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("LORAPORT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
_CHUNK = 1024 * 1024


TICKET = "Ticket: My invoice charged me twice this month, please refund."
# Line length decides the cost (the checks run per line): a bare ticket (~250 B) and a typical example
# with a longer instruction and answer (~1.5 KB).
LINES = {
    "short": ("You tag support tickets.", TICKET, "category: billing\npriority: high\nteam: payments"),
    "typical": (
        "You tag support tickets. " * 10,
        TICKET + " I have attached the statement." * 20,
        "category: billing\ndetail: " + "the customer was charged twice " * 20,
    ),
}


def make_dataset(path: Path, megabytes: int, style: str) -> None:
    system, question, answer = LINES[style]
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]
    line = json.dumps({"messages": messages}).encode() + b"\n"
    with path.open("wb") as out:
        for _ in range(megabytes * 1024 * 1024 // len(line) + 1):
            out.write(line)


def naive(settings: Settings, path: Path) -> float:
    start = time.perf_counter()
    data = path.read_bytes()
    for raw in data.splitlines():
        example = json.loads(raw)
        assert any(message["role"] == "assistant" for message in example["messages"])
    hashlib.sha256(data).hexdigest()
    store_for(settings).client.put_object(Bucket=settings.s3_bucket, Key=f"bench/{uuid.uuid4()}", Body=data)
    return time.perf_counter() - start


def streaming(settings: Settings, path: Path) -> float:
    start = time.perf_counter()
    ingest = FileIngest(store_for(settings).writer(f"bench/{uuid.uuid4()}"), 2**40, DatasetValidator())
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            ingest.feed(chunk)
    assert ingest.finish().validation.ok
    return time.perf_counter() - start


def http_upload(base_url: str, key: str, path: Path, api_pid: int) -> tuple[float, float, float]:
    """Seconds for an upload through the API, the API process's peak RSS in MB meanwhile, and the seconds
    until the data report (computed after the answer) is ready, so the next upload is measured alone."""
    peak = 0.0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        process = psutil.Process(api_pid)
        while not done.is_set():
            peak = max(peak, process.memory_info().rss / 2**20)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.perf_counter()
    with path.open("rb") as body:
        response = httpx.post(
            f"{base_url}/v1/files",
            headers={"Authorization": f"Bearer {key}"},
            files={"file": (path.name, body)},
            data={"purpose": "fine-tune"},
            timeout=600,
        )
    elapsed = time.perf_counter() - start
    done.set()
    watcher.join()
    response.raise_for_status()
    reported = time.perf_counter()
    headers = {"Authorization": f"Bearer {key}"}
    while httpx.get(f"{base_url}/v1/files/{response.json()['id']}", headers=headers).json()["status_details"] is None:
        time.sleep(0.2)
    return elapsed, peak, time.perf_counter() - reported


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[10, 100])
    sizes = parser.parse_args().sizes_mb
    database = f"loraport_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    work = Path(tempfile.mkdtemp(prefix="loraport-bench-"))
    s3 = SeaweedS3(work / "s3", access_key="bench", secret_key="bench-secret")
    api = None
    try:
        base = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        settings = Settings(
            home=work / "home",
            database_url=f"{base}/{database}",
            redis_url="redis://127.0.0.1:6379/14",
            s3_endpoint_url=s3.start(),
            s3_access_key="bench",
            s3_secret_key="bench-secret",
            max_upload_bytes=2**40,
        )
        prepare(settings)
        with transaction(settings.require("database_url")) as session:
            key = issue_key(session, get_or_create_org(session, "bench")).plaintext
        port = free_ports(1)[0]
        env = {**os.environ, **settings.as_environment()}
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.api.main:create_app", "--factory", "--port", str(port)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        base_url = f"http://127.0.0.1:{port}"
        while True:
            try:
                httpx.get(f"{base_url}/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        header = f"{'lines':>8} {'size':>7} {'naive MB/s':>11} {'ours MB/s':>10} {'ratio':>6} {'HTTP MB/s':>10}"
        print(header + f" {'API peak RSS':>13} {'report s':>9}")
        for style in LINES:
            for megabytes in sizes:
                path = work / f"data-{style}-{megabytes}.jsonl"
                make_dataset(path, megabytes, style)
                size = path.stat().st_size / 2**20
                naive_s, ours_s = naive(settings, path), streaming(settings, path)
                http_s, rss, report_s = http_upload(base_url, key, path, api.pid)
                print(
                    f"{style:>8} {megabytes:>5}MB {size / naive_s:>11.1f} {size / ours_s:>10.1f}"
                    f" {naive_s / ours_s:>6.2f} {size / http_s:>10.1f} {rss:>10.0f} MB {report_s:>9.1f}"
                )
                path.unlink()
    finally:
        if api:
            api.terminate()
            api.wait(timeout=30)
        s3.stop()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
