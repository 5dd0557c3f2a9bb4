"""One way to wait in a test: poll a condition until it holds, instead of sleeping a fixed time and hoping."""

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], *, timeout: float = 60.0, interval: float = 0.2, what: str = "") -> T:
    """The first truthy value `check()` returns, polling every `interval` seconds; past `timeout` an AssertionError
    says what was awaited and what was seen last. An exception raised by `check` ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not within {timeout:g} s: {what or getattr(check, '__name__', 'condition')}; last: {value!r}"
            )
        time.sleep(interval)
