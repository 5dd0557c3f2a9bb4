"""Child processes for the API process's CPU-heavy Python work: validating an upload, computing a data report.

Parsing a gigabyte of JSONL line by line is pure Python. In a thread of the API process it holds the interpreter
lock that the event loop and the inference engine need: one tenant's upload then slowed every tenant's chats
(`bench/noisy_neighbour.py` sampled the lock: 70 % of it held by upload validation, 14 % by a data report). In a
child process it holds a lock of its own, runs on another core where there is one, and at
`background_niceness` the kernel gives it the CPU only after the requests.

The children come from a fork server, not from `fork()` of the API process, which runs threads (a fork would copy
their locks in whatever state they were); the fork server has imported `preload`'s modules once, so a child starts
in milliseconds. Children are daemons: they end with the process that started them.
"""

import multiprocessing
from collections.abc import Callable, Iterable
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any

from app.core.niceness import yield_cpu


def preload(modules: Iterable[str]) -> None:
    """Modules the fork server imports when it starts (on the first child), so that children do not."""
    _context().set_forkserver_preload(sorted(modules))


def start_child(name: str, niceness: int, target: Callable[..., None], *args: Any) -> BaseProcess:
    """Runs `target(*args)` in a new daemon child process at `niceness`."""
    process = _context().Process(target=_at_niceness, args=(niceness, target, *args), name=name, daemon=True)
    process.start()
    return process


def run_in_child(name: str, niceness: int, target: Callable[..., None], *args: Any) -> int:
    """Runs `target(*args)` in a new child process at `niceness` and waits for it; its exit code (0: it returned,
    negative: the signal that killed it)."""
    process = start_child(name, niceness, target, *args)
    process.join()
    return process.exitcode if process.exitcode is not None else 1


def _context() -> ForkServerContext:
    return multiprocessing.get_context("forkserver")


def _at_niceness(niceness: int, target: Callable[..., None], *args: Any) -> None:
    yield_cpu(niceness)
    target(*args)
