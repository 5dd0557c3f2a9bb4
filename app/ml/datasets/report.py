"""The data report: problems that make fine-tunes fail quietly, each with the lines involved.

The profiler keeps a few numbers per example (line, 64-bit hashes of the normalised input and answer, an
answer-shape id), never the texts, so it can follow an upload of any size. Normalisation folds case and
removes whitespace, so near-duplicates that differ only in those count as the same.
"""

from array import array
from collections import Counter
from hashlib import blake2b
from typing import Any, TypedDict

from app.ml.datasets.formats import PREFERENCE
from app.ml.datasets.results import Example
from app.ml.datasets.shape import describe_shape, shape_of

LISTED = 100  # groups and lines listed per problem; the counts cover all of them
# Lines listed per group and answers per conflict: one prompt with 100k answers must not make a report of megabytes
# (audit #8: 400k answers gave 6.5 MB); `line_count`, `answer_count` and `group_sizes` say how many there are.
GROUP_LINES = 20
CONFLICT_ANSWERS = 10
SHORT_ANSWER_CHARS = 2
FEW_EXAMPLES = 50
DOMINANT_SHAPE_SHARE = 0.6
_WHITESPACE = b" \t\n\r\x0b\x0c"


class ReportWarning(TypedDict):
    code: str
    message: str
    lines: list[int]


class Conflict(TypedDict):
    """Examples sharing an input: their first lines, and the first of those grouped by answer, with how many of
    each there are in all."""

    lines: list[int]
    line_count: int
    answers: list[list[int]]
    answer_count: int


class LeakedGroup(TypedDict):
    validation_lines: list[int]
    training_lines: list[int]


class Leakage(TypedDict):
    count: int
    groups: list[LeakedGroup]


def _normalise(text: str) -> bytes:
    # Removing ASCII whitespace (rather than collapsing it) runs at C speed, 5x faster than split/join.
    return text.casefold().encode("utf-8", "surrogatepass").translate(None, _WHITESPACE)


def _hash(key: bytes) -> int:
    return int.from_bytes(blake2b(key, digest_size=8).digest(), "little")


def _input_key(messages: list[dict[str, Any]]) -> bytes:
    parts = [message["role"].encode() + b"\x1f" + _normalise(message["content"]) for message in messages]
    parts += [repr(message["tool_calls"]).encode() for message in messages if "tool_calls" in message]
    return b"\x1e".join(parts)


def _answer_key(example: Example) -> bytes:
    key = b"\x1e".join(_normalise(target) for target in example.targets)
    return key if example.rejected is None else key + b"\x1d" + _normalise(example.rejected)


def lines_text(lines: list[int], total: int | None = None) -> str:
    """The first ten lines, and how many more there are of `total` (all of them, when `lines` is a sample)."""
    total = len(lines) if total is None else total
    shown = ", ".join(map(str, lines[:10]))
    return shown + (f" and {total - min(10, len(lines))} more" if total > min(10, len(lines)) else "")


class DatasetProfiler:
    """Collects what the report needs from each valid example, fed in file order (e.g. as `on_example`)."""

    def __init__(self) -> None:
        self._format: str | None = None
        self._lines = array("I")
        self._inputs = array("Q")
        self._answers = array("Q")
        self._shapes = array("I")
        self._shape_ids: dict[str, int] = {}  # answer shape → its id; 0 is for answers without one
        self._short_answers: list[int] = []
        self._messages = 0
        self._characters = 0

    def add(self, example: Example) -> None:
        self._format = self._format or example.format
        self._lines.append(example.line)
        self._inputs.append(_hash(_input_key(example.input_messages)))
        self._answers.append(_hash(_answer_key(example)))
        answer = example.targets[0] if example.targets else None  # prompts (for distillation) have none
        shape = shape_of(answer) if answer is not None else None
        self._shapes.append(0 if shape is None else self._shape_ids.setdefault(shape, len(self._shape_ids) + 1))
        if answer is not None and len(answer.strip()) < SHORT_ANSWER_CHARS:
            self._short_answers.append(example.line)
        outputs = example.targets if example.rejected is None else [*example.targets, example.rejected]
        self._messages += len(example.input_messages) + len(outputs)
        self._characters += sum([len(m["content"]) for m in example.input_messages]) + sum(map(len, outputs))

    def fingerprints(self) -> dict[str, list[int]]:
        """Lines by hash of normalised input and answer, stored per file to find leakage between two files."""
        found: dict[str, list[int]] = {}
        for line, input_hash, answer_hash in zip(self._lines, self._inputs, self._answers, strict=True):
            found.setdefault(f"{input_hash:016x}{answer_hash:016x}", []).append(line)
        return found

    def report(self) -> dict[str, Any]:
        """The report as JSON-serialisable data; `warnings` sums it up as `{code, message, lines}`."""
        duplicates, conflicts = self._repeated_inputs()
        shape = self._shape()
        report: dict[str, Any] = {
            "format": self._format,
            "counts": {"examples": len(self._lines), "messages": self._messages, "characters": self._characters},
            "duplicates": {
                "group_count": len(duplicates),
                "groups": [group[:GROUP_LINES] for group in duplicates[:LISTED]],
                "group_sizes": [len(group) for group in duplicates[:LISTED]],
            },
            "conflicts": {"group_count": len(conflicts), "groups": conflicts[:LISTED]},
            "shape": shape,
            "short_targets": {"count": len(self._short_answers), "lines": self._short_answers[:LISTED]},
        }
        report["warnings"] = _warnings(report)
        return report

    def _repeated_inputs(self) -> tuple[list[list[int]], list[Conflict]]:
        """Groups of duplicate examples, and of examples sharing an input with different answers."""
        counts = Counter(self._inputs)
        answers_by_input: dict[int, dict[int, list[int]]] = {}
        for line, input_hash, answer_hash in zip(self._lines, self._inputs, self._answers, strict=True):
            if counts[input_hash] > 1:
                answers_by_input.setdefault(input_hash, {}).setdefault(answer_hash, []).append(line)
        duplicates: list[list[int]] = []
        conflicts: list[Conflict] = []
        for answers in answers_by_input.values():
            duplicates += [lines for lines in answers.values() if len(lines) > 1]
            # Several preference pairs per prompt are normal; only chat and completions must answer consistently.
            if len(answers) > 1 and self._format != PREFERENCE:
                conflicts.append(_conflict(sorted(answers.values())))
        duplicates.sort()
        conflicts.sort(key=lambda conflict: conflict["lines"])
        return duplicates, conflicts

    def _shape(self) -> dict[str, Any] | None:
        """The shape most answers share and the lines that break it, when at least 60% share one."""
        counts = Counter(self._shapes)
        counts.pop(0, None)  # answers with no structure cannot be dominant
        if not counts:
            return None
        shape_id, count = counts.most_common(1)[0]
        share = count / len(self._shapes)
        breaking = [line for line, shape in zip(self._lines, self._shapes, strict=True) if shape != shape_id]
        if share < DOMINANT_SHAPE_SHARE or not breaking:
            return None
        shape = next(shape for shape, known_id in self._shape_ids.items() if known_id == shape_id)
        return {**describe_shape(shape), "share": round(share, 3), "count": len(breaking), "lines": breaking[:LISTED]}


def _conflict(groups: list[list[int]]) -> Conflict:
    lines = sorted(line for lines in groups for line in lines)
    return {
        "lines": lines[:GROUP_LINES],
        "line_count": len(lines),
        "answers": [group[:GROUP_LINES] for group in groups[:CONFLICT_ANSWERS]],
        "answer_count": len(groups),
    }


def _warnings(report: dict[str, Any]) -> list[ReportWarning]:
    warnings: list[ReportWarning] = []
    examples = report["counts"]["examples"]
    if examples < FEW_EXAMPLES:
        message = f"Only {examples} examples: {FEW_EXAMPLES} or more usually give a clearly better fine-tune."
        warnings.append({"code": "few_examples", "message": message, "lines": []})
    if groups := report["duplicates"]["groups"]:
        lines = sorted(line for group in groups for line in group)
        total = sum(report["duplicates"]["group_sizes"])
        message = (
            f"{report['duplicates']['group_count']} group(s) of duplicate examples (same input and answer, ignoring "
            f"case and whitespace), on lines {lines_text(lines, total)}. Duplicates weigh more in training."
        )
        warnings.append({"code": "duplicate_examples", "message": message, "lines": lines[:LISTED]})
    if groups := report["conflicts"]["groups"]:
        lines = sorted(line for group in groups for line in group["lines"])
        total = sum(group["line_count"] for group in groups)
        message = (
            f"{report['conflicts']['group_count']} input(s) appear with different answers, on lines "
            f"{lines_text(lines, total)}. The model learns the contradiction: make each input's answer consistent."
        )
        warnings.append({"code": "conflicting_targets", "message": message, "lines": lines[:LISTED]})
    if shape := report["shape"]:
        message = (
            f"{shape['share']:.0%} of answers are {shape['kind'].replace('_', ' ')} with keys "
            f"{', '.join(shape['keys'])}; {shape['count']} break that shape, on lines "
            f"{lines_text(shape['lines'], shape['count'])}."
        )
        warnings.append({"code": "inconsistent_output_shape", "message": message, "lines": shape["lines"]})
    if lines := report["short_targets"]["lines"]:
        message = (
            f"{report['short_targets']['count']} answer(s) are empty or shorter than {SHORT_ANSWER_CHARS} "
            f"characters, on lines {lines_text(lines, report['short_targets']['count'])}."
        )
        warnings.append({"code": "short_targets", "message": message, "lines": lines})
    return warnings


def leakage(training_fingerprints: dict[str, list[int]], validation_fingerprints: dict[str, list[int]]) -> Leakage:
    """Validation examples that also appear in the training file, which make validation loss look too good."""
    shared = validation_fingerprints.keys() & training_fingerprints.keys()
    groups: list[LeakedGroup] = [
        {"validation_lines": validation_fingerprints[key], "training_lines": training_fingerprints[key]}
        for key in sorted(shared, key=lambda key: validation_fingerprints[key][0])
    ]
    return {"count": sum(len(validation_fingerprints[key]) for key in shared), "groups": groups[:LISTED]}
