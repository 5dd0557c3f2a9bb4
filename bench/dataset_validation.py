"""Validator and profiler throughput on a synthetic ~50 MB chat JSONL fed in 1 MiB chunks (printed, not asserted).

.venv/bin/python -m bench.dataset_validation [--size-mb 50]
"""

import argparse
import json
import random
import time

from app.datasets import DatasetProfiler, DatasetValidator

_CHUNK = 2**20
_WORDS = [
    "the",
    "a",
    "customer",
    "order",
    "refund",
    "shipping",
    "delayed",
    "invoice",
    "account",
    "password",
    "reset",
    "please",
    "help",
    "thanks",
]


def synthetic_chat(size_bytes: int) -> bytes:
    rng = random.Random(0)
    lines, size = [], 0
    while size < size_bytes:
        question = " ".join(rng.choices(_WORDS, k=rng.randint(50, 300)))
        answer = f"category: {rng.choice(_WORDS)}\npriority: high\nsummary: {' '.join(rng.choices(_WORDS, k=30))}"
        messages = [
            {"role": "system", "content": "You are a support triage assistant."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
        line = (json.dumps({"messages": messages}) + "\n").encode()
        lines.append(line)
        size += len(line)
    return b"".join(lines)


def throughput(data: bytes, profile: bool) -> float:
    started = time.perf_counter()
    profiler = DatasetProfiler()
    validator = DatasetValidator(on_example=profiler.add if profile else None)
    for start in range(0, len(data), _CHUNK):
        validator.feed_chunk(data[start : start + _CHUNK])
    assert validator.finish().ok
    if profile:
        profiler.report()
    return len(data) / 2**20 / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=50)
    data = synthetic_chat(parser.parse_args().size_mb * 2**20)
    lines = data.splitlines()
    started = time.perf_counter()
    for line in lines:
        json.loads(line)
    naive = len(data) / 2**20 / (time.perf_counter() - started)
    print(f"{len(data) / 2**20:.0f} MiB, {len(lines)} lines of chat")
    print(f"json.loads alone:       {naive:6.1f} MiB/s")
    print(f"validator:              {throughput(data, profile=False):6.1f} MiB/s")
    print(f"validator and profiler: {throughput(data, profile=True):6.1f} MiB/s")


if __name__ == "__main__":
    main()
