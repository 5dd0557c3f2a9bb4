"""Token counts per example with a base model's fast tokenizer, in batches, for the data report."""

import math
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from app.ml.datasets.report import LISTED, lines_text
from app.ml.datasets.results import Example


def _sequences(example: Example) -> list[list[dict[str, Any]]]:
    """The conversations training builds from an example: one, or chosen and rejected for a preference pair."""
    answers = [*example.targets, *([example.rejected] if example.rejected is not None else [])]
    return [[*example.input_messages, {"role": "assistant", "content": answer}] for answer in answers]


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> str:
    if tokenizer.chat_template:
        try:
            # Untokenized, the template's output is a str (the library's return type covers every other option too).
            return tokenizer.apply_chat_template(messages, tokenize=False)  # type: ignore[return-value]
        except (TemplateError, ValueError, TypeError):
            pass  # a template that rejects this conversation (tool calls, roles): count the plain text instead
    return "\n".join(message["content"] for message in messages)


def _batches(examples: Iterable[Example], size: int) -> Iterator[list[Example]]:
    iterator = iter(examples)
    while batch := list(islice(iterator, size)):
        yield batch


def token_stats(
    tokenizer: PreTrainedTokenizerBase, examples: Iterable[Example], max_length: int, batch_size: int = 256
) -> dict[str, Any]:
    """Tokens per example (its longest sequence), the total to train on, and the lines over `max_length`.

    Over-long examples are truncated in training, not rejected, so they are reported with their lines.
    """
    started = time.perf_counter()
    counts: list[int] = []
    over_max_length: list[int] = []
    total = 0
    special_tokens = not tokenizer.chat_template  # a chat template writes its own special tokens
    for batch in _batches(examples, batch_size):
        owners, texts = [], []
        for index, example in enumerate(batch):
            for sequence in _sequences(example):
                owners.append(index)
                texts.append(_render(tokenizer, sequence))
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=special_tokens)["input_ids"]]
        total += sum(lengths)
        longest = [0] * len(batch)
        for index, length in zip(owners, lengths, strict=True):
            longest[index] = max(longest[index], length)
        counts += longest
        over_max_length += [example.line for example, length in zip(batch, longest, strict=True) if length > max_length]
    elapsed = time.perf_counter() - started
    if not counts:
        return {"examples": 0, "total_tokens": 0, "max_length": max_length}
    ordered = sorted(counts)
    truncated = f"{len(over_max_length)} example(s) longer than {max_length} tokens will be truncated, on lines "
    return {
        "examples": len(counts),
        "total_tokens": total,
        "min": ordered[0],
        "mean": round(sum(counts) / len(counts), 1),
        "p95": ordered[math.ceil(0.95 * len(ordered)) - 1],
        "max": ordered[-1],
        "max_length": max_length,
        "over_max_length": {
            "count": len(over_max_length),
            "lines": over_max_length[:LISTED],
            "message": truncated + lines_text(over_max_length) + "." if over_max_length else None,
        },
        "examples_per_second": round(len(counts) / elapsed, 1) if elapsed > 0 else None,
    }
