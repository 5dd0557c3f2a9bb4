"""Line-by-line checks of a chat-format JSONL dataset, with 1-based line numbers in every error."""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
_MESSAGE_KEYS = {"role", "content", "name", "weight"}
_ERRORS_SHOWN = 5


@dataclass
class DatasetReport:
    example_count: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    def add_error(self, line_number: int, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < _ERRORS_SHOWN:
            self.errors.append(f"line {line_number}: {reason}")

    @property
    def ok(self) -> bool:
        return self.error_count == 0 and self.example_count > 0

    def summary(self) -> str:
        if self.error_count == 0 and self.example_count == 0:
            return "The file is empty: it must hold one JSON object per line, each with a 'messages' list."
        more = self.error_count - len(self.errors)
        tail = f" (and {more} more bad lines)" if more > 0 else ""
        return "Invalid file format: " + "; ".join(self.errors) + tail + "."


def check_example(example: Any) -> str | None:
    """Why one decoded line is not a chat example, or None when it is."""
    if not isinstance(example, dict):
        return f"expected a JSON object, found {type(example).__name__}"
    messages = example.get("messages")
    if messages is None:
        return "missing the 'messages' list"
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for index, message in enumerate(messages, start=1):
        problem = _check_message(message)
        if problem:
            return f"message {index} {problem}"
    if not any(message["role"] == "assistant" for message in messages):
        return "no assistant message: each example needs at least one message with role 'assistant'"
    return None


def _check_message(message: Any) -> str | None:
    if not isinstance(message, dict):
        return "is not a JSON object"
    unknown = set(message) - _MESSAGE_KEYS
    if unknown:
        return f"has unrecognised keys {sorted(unknown)}; allowed: {sorted(_MESSAGE_KEYS)}"
    role = message.get("role")
    if role not in ROLES:
        return f"has role {role!r}; the role must be one of {', '.join(ROLES)}"
    if not isinstance(message.get("content"), str):
        return "is missing 'content' (a string)"
    weight = message.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, bool):
        return "has a 'weight' other than 0 or 1"
    return None


def check_jsonl(lines: Iterable[bytes]) -> DatasetReport:
    """Checks every line; blank lines are skipped."""
    report = DatasetReport()
    for line_number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            example = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            report.add_error(line_number, "not valid UTF-8")
            continue
        except json.JSONDecodeError as error:
            report.add_error(line_number, f"not valid JSON ({error.msg} at column {error.colno})")
            continue
        problem = check_example(example)
        if problem:
            report.add_error(line_number, problem)
        else:
            report.example_count += 1
    return report
