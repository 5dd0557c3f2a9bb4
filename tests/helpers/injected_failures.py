"""Failures injected where generation can break, once, so a test sees both the failed request and the next one."""

from collections.abc import Callable
from typing import Any

import pytest


def always(*_: Any, **__: Any) -> bool:
    return True


def fail_once(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, error: Exception, when: Callable[..., bool] = always
) -> None:
    """`owner.name` raises `error` the first time it is called with arguments for which `when` holds."""
    original = getattr(owner, name)
    failed: list[bool] = []

    def failing(*args: Any, **kwargs: Any) -> Any:
        if not failed and when(*args, **kwargs):
            failed.append(True)
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)
