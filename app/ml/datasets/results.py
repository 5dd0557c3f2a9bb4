"""What validation hands back: line-numbered errors, the overall result, and the examples it parsed."""

from dataclasses import dataclass, field
from typing import Any

_ERRORS_IN_SUMMARY = 5


@dataclass(frozen=True, slots=True)
class LineError:
    """One problem; `line` is 1-based, or None for a problem with the whole file."""

    line: int | None
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class Example:
    """A valid example in the shape shared by all formats.

    `input_messages` are the messages the model sees before the answer it is trained on (for chat: those
    before the last trained assistant turn), each `{"role", "content": str}` plus `tool_calls` when present.
    `targets` holds that answer; a preference pair keeps its rejected answer in `rejected`.
    """

    line: int
    format: str
    input_messages: list[dict[str, Any]]
    targets: list[str]
    rejected: str | None = None


@dataclass
class ValidationResult:
    format: str | None
    example_count: int
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0
    warnings: list[LineError] = field(default_factory=list)
    warning_count: int = 0

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def summary(self) -> str:
        """One paragraph for an HTTP 400 message or a file's `status_details`."""
        if self.ok:
            noun = "example" if self.example_count == 1 else "examples"
            warned = f" with {self.warning_count} warning(s): {self.warnings[0].message}" if self.warnings else ""
            return f"Checks passed: {self.example_count} {self.format} {noun}{warned}"
        shown = " ".join(error.message for error in self.errors[:_ERRORS_IN_SUMMARY])
        more = self.error_count - min(len(self.errors), _ERRORS_IN_SUMMARY)
        tail = f" And {more} more error(s)." if more > 0 else ""
        return f"The file has {self.error_count} error(s). {shown}{tail}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "example_count": self.example_count,
            "error_count": self.error_count,
            "errors": [error.as_dict() for error in self.errors],
            "warning_count": self.warning_count,
            "warnings": [warning.as_dict() for warning in self.warnings],
        }
