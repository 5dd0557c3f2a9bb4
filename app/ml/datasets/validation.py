"""Streaming validation of a JSONL dataset: every line checked as it arrives, errors with 1-based line numbers.

Feed either whole lines (`feed_line`) or raw chunks straight from the network (`feed_chunk`, which splits
them itself), never both, then call `finish`. Memory stays flat in the file size: at most one line is held,
and only the first `max_errors` errors and warnings are kept (their totals are counted).

Rules: blank (whitespace-only) lines are skipped and counted in one warning; the file's format is the format
of its first valid line, and a later line of another format is a `mixed_formats` error; a last line without
a newline is checked like any other (a file cut off mid-line fails as invalid JSON on that line).
"""

import codecs
import json
from collections.abc import Callable
from typing import Any

from app.core.json_depth import nests_deeper_than
from app.ml.datasets.formats import CHAT, FORMAT_HINT, PROMPT_COMPLETION, PROMPTS, detect_format, parse_example
from app.ml.datasets.lines import LineSplitter
from app.ml.datasets.messages import InvalidExample, json_type
from app.ml.datasets.results import Example, LineError, ValidationResult


class DatasetValidator:
    def __init__(
        self,
        *,
        max_line_bytes: int = 50 * 2**20,
        max_depth: int = 64,
        max_errors: int = 100,
        min_examples: int = 10,
        on_example: Callable[[Example], None] | None = None,
    ) -> None:
        self._max_line_bytes = max_line_bytes
        self._max_depth = max_depth
        self._max_errors = max_errors
        self._min_examples = min_examples
        self._on_example = on_example
        self._splitter = LineSplitter(max_line_bytes)
        self._line = 0
        self._non_blank_lines = 0
        self._blank_lines = 0
        self._first_blank_line = 0
        self._format_line = 0
        self._result = ValidationResult(format=None, example_count=0)

    @property
    def error_count(self) -> int:
        """Errors found so far: a caller can stop storing an upload at the first one and keep validating."""
        return self._result.error_count

    def feed_chunk(self, chunk: bytes) -> None:
        """Checks the lines completed by the next chunk of the file, whatever its size."""
        for line in self._splitter.push(chunk):
            self._check_line(line, ends_file=False)

    def feed_line(self, raw: bytes) -> None:
        """Checks the next line; `raw` keeps its trailing newline, which only the file's last line may lack."""
        content = raw.removesuffix(b"\n")
        self._check_line(content, ends_file=len(content) == len(raw))

    def finish(self) -> ValidationResult:
        """The result, after the last line (one without a newline, when chunks were fed) and file-level checks."""
        for line in self._splitter.close():
            self._check_line(line, ends_file=True)
        result = self._result
        if self._blank_lines:
            first, count = self._first_blank_line, self._blank_lines
            self._warn(None, "blank_lines", f"Skipped {count} blank line(s), the first on line {first}.")
        if self._non_blank_lines == 0:
            self._fail(None, "empty_file", f"The file is empty: it must hold one example per line, as {FORMAT_HINT}.")
        elif self._non_blank_lines < self._min_examples:
            self._fail(
                None,
                "too_few_examples",
                f"The file has only {self._non_blank_lines} example(s); at least {self._min_examples} are required.",
            )
        return result

    def _check_line(self, content: bytes, ends_file: bool) -> None:
        self._line += 1
        line = self._line
        if len(content) > self._max_line_bytes:
            self._fail(line, "line_too_long", f"Line {line} is longer than the limit of {self._max_line_bytes} bytes.")
            return
        if not content or content.isspace():
            self._blank_lines += 1
            self._first_blank_line = self._first_blank_line or line
            return
        self._non_blank_lines += 1
        if line == 1:
            content = content.removeprefix(codecs.BOM_UTF8)
        value = self._decode(content, line, ends_file)
        if value is None:
            return
        format = detect_format(value)
        if format is None:
            keys = ", ".join(list(value)[:5]) or "none"
            self._fail(
                line,
                "unknown_format",
                f"Line {line} is not a recognised example (keys: {keys}); expected {FORMAT_HINT}.",
            )
            return
        known = self._result.format
        if format == PROMPTS and known in (CHAT, PROMPT_COMPLETION):
            format = known  # an example that lost its answer: say so, rather than "mixed formats"
        if known is not None and format != known:
            self._fail(
                line,
                "mixed_formats",
                f"Found multiple dataset formats in the input file. Got {known} and {format} on line {line}. "
                f"All examples must share the format of the first valid line ({self._format_line}).",
            )
            return
        try:
            example = parse_example(value, format, line)
        except InvalidExample as invalid:
            self._fail(line, invalid.code, invalid.message)
            return
        self._accept(example, line)

    def _decode(self, content: bytes, line: int, ends_file: bool) -> dict[str, Any] | None:
        """The line's JSON object, or None after recording why it is not one."""
        if nests_deeper_than(content, self._max_depth):
            self._fail(line, "too_deeply_nested", f"Line {line} nests JSON deeper than {self._max_depth} levels.")
            return None
        try:
            value = json.loads(content.decode("utf-8"))
        except UnicodeDecodeError as error:
            byte = content[error.start]
            self._fail(
                line, "not_utf8", f"Line {line} is not UTF-8 encoded: byte 0x{byte:02x} at column {error.start + 1}."
            )
            return None
        except json.JSONDecodeError as error:
            cut = " The file ends in the middle of this line: was it cut off?" if ends_file else ""
            message = f"Line {line} is not valid JSON: {error.msg} (column {error.colno}).{cut}"
            self._fail(line, "invalid_json", message)
            return None
        except RecursionError:
            self._fail(line, "too_deeply_nested", f"Line {line} nests JSON deeper than {self._max_depth} levels.")
            return None
        if not isinstance(value, dict):
            self._fail(line, "not_a_json_object", f"Line {line} is not a JSON object, found {json_type(value)}.")
            return None
        return value

    def _accept(self, example: Example, line: int) -> None:
        result = self._result
        result.example_count += 1
        if result.format is None:
            result.format = example.format
            self._format_line = line
        if self._on_example is not None:
            self._on_example(example)

    def _fail(self, line: int | None, code: str, message: str) -> None:
        self._result.error_count += 1
        if len(self._result.errors) < self._max_errors:
            self._result.errors.append(LineError(line, code, message))

    def _warn(self, line: int | None, code: str, message: str) -> None:
        self._result.warning_count += 1
        if len(self._result.warnings) < self._max_errors:
            self._result.warnings.append(LineError(line, code, message))
