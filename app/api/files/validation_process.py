"""Validating an upload in a child process (`app.core.background_processes`), so that parsing its lines holds that
process's interpreter lock rather than the API's.

Chunks go to the child over a pipe, one at a time, and each answer is the count of errors so far, which is all
`FileIngest` needs while the file streams in; the full `ValidationResult` comes back at the end. Validations at once
are bounded (`ValidationSlots`), in all and per organisation, since each holds a process: beyond the bound an
upload is refused at once with a 429 rather than queued behind another tenant's gigabyte.
"""

import multiprocessing
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from multiprocessing.connection import Connection
from typing import Any

from app.core.background_processes import start_child
from app.core.errors import Overloaded, ServiceUnavailable
from app.core.settings import Settings
from app.ml.datasets.results import ValidationResult
from app.ml.datasets.validation import DatasetValidator

_RETRY_AFTER_S = 5


class ValidationSlots:
    """Validations running in this API process: at most `total`, and `per_organization` of one organisation."""

    def __init__(self, total: int, per_organization: int) -> None:
        self._total, self._per_organization = total, per_organization
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()  # taken from the event loop and from threads, each time for microseconds

    def in_use(self) -> int:
        with self._lock:
            return self._running.total()

    @contextmanager
    def take(self, organization_id: str) -> Iterator[None]:
        with self._lock:
            if self._running[organization_id] >= self._per_organization:
                raise Overloaded(
                    f"Your organisation already has {self._per_organization} uploads being validated; "
                    "retry when one has finished",
                    _RETRY_AFTER_S,
                    refusal="admission",
                )
            if self._running.total() >= self._total:
                raise Overloaded(
                    "The server is busy validating other uploads; retry shortly", _RETRY_AFTER_S, refusal="admission"
                )
            self._running[organization_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._running[organization_id] -= 1


def validation_slots(settings: Settings) -> ValidationSlots:
    """This API process's slots under the deployment's limits."""
    return _slots(settings.upload_validation_processes, settings.upload_validations_per_organization)


@lru_cache
def _slots(total: int, per_organization: int) -> ValidationSlots:
    return ValidationSlots(total, per_organization)  # one set per pair of limits: tests with other settings get theirs


@contextmanager
def validation(settings: Settings, organization_id: str) -> Iterator["ValidationProcess"]:
    """A validator in its own process under one of the organisation's slots; blocks while the child starts."""
    with validation_slots(settings).take(organization_id):
        validator = ValidationProcess(settings)
        try:
            yield validator
        finally:
            validator.close()


class ValidationProcess:
    """A `DatasetValidator` in a child process, with the part of its interface that `FileIngest` uses."""

    def __init__(self, settings: Settings) -> None:
        self._connection, child_end = multiprocessing.Pipe()
        validator_limits = (settings.max_line_bytes, settings.max_json_depth)
        self._process = start_child(
            "upload-validation", settings.background_niceness, _validate, child_end, *validator_limits
        )
        child_end.close()  # the child holds it now: if the child dies, reading our end ends at once
        self.error_count = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def feed_chunk(self, chunk: bytes) -> None:
        if chunk:  # an empty message means the end of the file
            self.error_count = int(self._exchange(chunk))

    def finish(self) -> ValidationResult:
        result: ValidationResult = self._exchange(b"")
        return result

    def close(self) -> None:
        """Ends the child, finished or not (an upload refused half-way stops being validated)."""
        self._connection.close()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def _exchange(self, message: bytes) -> Any:
        """Sends a chunk (or the end) and returns the child's answer."""
        try:
            self._connection.send_bytes(message)
            return self._connection.recv()
        except (EOFError, OSError):
            raise ServiceUnavailable("The upload could not be validated (its validation process ended)") from None


def _validate(connection: Connection, max_line_bytes: int, max_depth: int) -> None:
    """The child: validates chunks until the empty one, answering each with the errors so far, then the result."""
    validator = DatasetValidator(max_line_bytes=max_line_bytes, max_depth=max_depth)
    try:
        while chunk := connection.recv_bytes():
            validator.feed_chunk(chunk)
            connection.send(validator.error_count)
        connection.send(validator.finish())
    except (EOFError, BrokenPipeError):
        return  # the API stopped reading this upload: nothing to answer
