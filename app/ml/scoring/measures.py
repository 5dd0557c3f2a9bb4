"""How close an answer is to the target answer of a held-out example, and what a set of such scores says.

The target's shape decides what is measured beyond exact match:
- a JSON object: whether the answer is a JSON object with the same keys (format), and the share of the target's
  keys whose values the answer has equal (fields); exact match compares the parsed objects, not the spacing;
- `key: value` lines (two or more, as "category: how-to\\npriority: low"): whether the answer is the same keys in
  the same order (format), and the share of the target's keys whose value the answer gives (fields);
- anything else: plain text, with neither format nor fields.
Every answer also gets chrF (sacrebleu's character n-gram F-score, 0-100: partial credit that does not depend on
a tokenizer) and its length relative to the target's.
"""

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sacrebleu.metrics.chrf import CHRF

Shape = Literal["json", "fields", "text"]
_FIELD_LINE = re.compile(r"^\s*([^:\n]+?)\s*:\s*(.*?)\s*$")
_CHRF = CHRF()


@dataclass(frozen=True)
class AnswerScore:
    exact: bool
    format_kept: bool | None  # None for plain-text targets
    fields_right: int  # of the target's fields (0 of 0 for plain text)
    fields: int
    chrf: float  # 0-100
    length_ratio: float  # characters of the answer over those of the target

    @property
    def field_accuracy(self) -> float | None:
        return self.fields_right / self.fields if self.fields else None


def target_shape(target: str) -> Shape:
    if isinstance(_json_object(target), dict):
        return "json"
    lines = [line for line in target.strip().splitlines() if line.strip()]
    if len(lines) >= 2 and all(_FIELD_LINE.match(line) for line in lines):
        return "fields"
    return "text"


def score_answer(answer: str, target: str) -> AnswerScore:
    answer, target = answer.strip(), target.strip()
    shape = target_shape(target)
    chrf = _CHRF.sentence_score(answer, [target]).score
    length_ratio = len(answer) / max(len(target), 1)
    if shape == "json":
        expected, got = _json_object(target), _json_object(answer)
        right = sum(1 for key, value in expected.items() if isinstance(got, dict) and key in got and got[key] == value)
        format_kept = isinstance(got, dict) and set(got) == set(expected)
        return AnswerScore(got == expected, format_kept, right, len(expected), chrf, length_ratio)
    expected_fields = _fields(target) if shape == "fields" else None
    if expected_fields is not None:  # every line of the target is a field (`target_shape` checked)
        got_fields = _fields(answer)
        got = dict(got_fields or [])
        right = sum(1 for key, value in expected_fields if got.get(key) == value)
        format_kept = got_fields is not None and [key for key, _ in got_fields] == [key for key, _ in expected_fields]
        return AnswerScore(answer == target, format_kept, right, len(expected_fields), chrf, length_ratio)
    return AnswerScore(answer == target, None, 0, 0, chrf, length_ratio)


def _json_object(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # a target string holding JSON nested past the parser's recursion
        return None


def _fields(text: str) -> list[tuple[str, str]] | None:
    """The `key: value` pairs of `text`, in order; None when a non-empty line is not one."""
    pairs = []
    for line in text.splitlines():
        if line.strip():
            match = _FIELD_LINE.match(line)
            if match is None:
                return None
            pairs.append((match.group(1), match.group(2)))
    return pairs or None


@dataclass(frozen=True)
class Summary:
    examples: int
    exact: float  # share of answers exactly right
    exact_interval: tuple[float, float]  # its 95 % Wilson interval: how far a small held-out set can be trusted
    format_kept: float | None  # share of answers with the target's shape (structured targets only)
    field_accuracy: float | None  # share of all target fields right
    chrf: float  # mean
    length_ratio: float  # mean


def summarize(scores: Sequence[AnswerScore]) -> Summary:
    if not scores:
        raise ValueError("no answers to summarize")
    exact = sum(score.exact for score in scores)
    shaped = [score.format_kept for score in scores if score.format_kept is not None]
    fields = sum(score.fields for score in scores)
    return Summary(
        examples=len(scores),
        exact=exact / len(scores),
        exact_interval=wilson_interval(exact, len(scores)),
        format_kept=sum(shaped) / len(shaped) if shaped else None,
        field_accuracy=sum(score.fields_right for score in scores) / fields if fields else None,
        chrf=sum(score.chrf for score in scores) / len(scores),
        length_ratio=sum(score.length_ratio for score in scores) / len(scores),
    )


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default): unlike p ± z·√(p(1-p)/n) it stays within
    [0, 1] and is not zero-width at 0 % or 100 %, which is where a small held-out set usually lands."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))


def worst(scores: Sequence[AnswerScore], count: int) -> list[int]:
    """Indices of the `count` answers furthest from their targets, worst first: wrong before right, then the
    fewest fields right, then the lowest chrF."""
    order = sorted(
        range(len(scores)),
        key=lambda i: (scores[i].exact, scores[i].field_accuracy or 0.0, scores[i].chrf),
    )
    return order[:count]
