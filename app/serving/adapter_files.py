"""Adapter files fetched from object storage into a local directory and kept there, so an adapter evicted from
memory reloads from disk; past a byte budget the least recently used are deleted (never one that is loaded), so
the disk does not fill with every adapter ever served."""

import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from app.ml.base_models.disk_cache import build_once

FetchAdapter = Callable[[str, Path], None]


def adapter_directory_name(adapter_name: str) -> str:
    """A file name for the adapter that stays readable and cannot collide (names may contain ':' or '/')."""
    digest = hashlib.sha256(adapter_name.encode()).hexdigest()
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', adapter_name)[:80]}-{digest[:12]}"


class AdapterFiles:
    """`path(name)` fetches the adapter once and marks it used (its directory's mtime); a fetch that brings the
    cache past `max_bytes` deletes the least recently used directories, except those of `in_use()` adapters."""

    def __init__(
        self,
        directory: Path,
        fetch: FetchAdapter,
        max_bytes: int | None = None,
        in_use: Callable[[], set[str]] = set,
    ) -> None:
        self._directory, self._fetch, self._max_bytes, self._in_use = directory, fetch, max_bytes, in_use
        self._clock_lock = threading.Lock()
        self._last_used_ns = 0

    def path(self, adapter_name: str) -> Path:
        directory = self._directory / adapter_directory_name(adapter_name)
        # build_once's flock serialises threads as well as processes, so a cold adapter is fetched once.
        fetched = build_once(directory, lambda staging: self._fetch(adapter_name, staging))
        self._mark_used(directory)
        if fetched and self._max_bytes is not None:
            self._evict_beyond(self._max_bytes, keep={directory.name})
        return directory

    def remove(self, adapter_name: str) -> None:
        shutil.rmtree(self._directory / adapter_directory_name(adapter_name), ignore_errors=True)

    def _mark_used(self, directory: Path) -> None:
        with self._clock_lock:  # strictly increasing, so two uses in the same clock tick keep their order
            self._last_used_ns = max(time.time_ns(), self._last_used_ns + 1)
            used = self._last_used_ns
        os.utime(directory, ns=(used, used))

    def _evict_beyond(self, max_bytes: int, keep: set[str]) -> None:
        keep = keep | {adapter_directory_name(name) for name in self._in_use()}
        entries = [entry for entry in self._directory.iterdir() if entry.is_dir() and not entry.name.startswith(".")]
        sizes = {entry: _size(entry) for entry in entries}
        total = sum(sizes.values())
        for entry in sorted(entries, key=lambda entry: entry.stat().st_mtime_ns):
            if total <= max_bytes:
                return
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)
                total -= sizes[entry]


def _size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
