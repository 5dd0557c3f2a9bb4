"""Validator, profiler and token-count throughput on a synthetic chat JSONL fed in 1 MiB chunks.

.venv/bin/python -m bench.dataset_validation [--size-mb 50] [--token-examples 5000]

Printed, not asserted. Token counts use the default base model's fast (Rust) tokenizer in batches,
against one `tokenizer(text)` call per example, side by side.
"""

import argparse
import json
import random
import time

from app.core.settings import Settings
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.datasets import DatasetProfiler, DatasetValidator, Example
from app.ml.datasets.tokens import token_stats

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


def token_counting(data: bytes, count: int) -> None:
    examples: list[Example] = []
    validator = DatasetValidator(on_example=examples.append)
    validator.feed_chunk(b"\n".join(data.splitlines()[:count]) + b"\n")
    validator.finish()
    settings = Settings()
    registry = BaseModelRegistry(settings.model_cache_dir)
    tokenizer = registry.tokenizer(settings.default_base_model)
    started = time.perf_counter()
    token_stats(tokenizer, examples, max_length=2048)
    batched = len(examples) / (time.perf_counter() - started)
    started = time.perf_counter()
    for example in examples:
        messages = [*example.input_messages, {"role": "assistant", "content": example.targets[0]}]
        tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)
    one_by_one = len(examples) / (time.perf_counter() - started)
    print(f"token counts, batched:  {batched:8.0f} examples/s ({len(examples)} examples)")
    print(f"token counts, one call each: {one_by_one:3.0f} examples/s; ratio {batched / one_by_one:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--token-examples", type=int, default=5000)
    arguments = parser.parse_args()
    data = synthetic_chat(arguments.size_mb * 2**20)
    lines = data.splitlines()
    started = time.perf_counter()
    for line in lines:
        json.loads(line)
    naive = len(data) / 2**20 / (time.perf_counter() - started)
    print(f"{len(data) / 2**20:.0f} MiB, {len(lines)} lines of chat")
    print(f"json.loads alone:       {naive:6.1f} MiB/s")
    print(f"validator:              {throughput(data, profile=False):6.1f} MiB/s")
    print(f"validator and profiler: {throughput(data, profile=True):6.1f} MiB/s")
    token_counting(data, arguments.token_examples)


if __name__ == "__main__":
    main()
