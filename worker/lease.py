"""Keeps the lease of running work (a job or an evaluation) alive from a background thread while its worker process
lives.

A job's steps renew the lease too, but a slow first step, a long evaluation or a large checkpoint upload must not let
it lapse; a killed process stops renewing, and the reaper re-queues the work one lease later.
"""

import threading
from types import TracebackType

import structlog

from app.core.db import transaction
from app.core.lifecycle import Lifecycle

log = structlog.get_logger()


class LeaseKeeper:
    """`with LeaseKeeper(...):` renews the lease of `attempt` every third of its length until the block ends, or
    until the work is no longer this attempt's (cancelled, finished, or re-queued by the reaper)."""

    def __init__(
        self, database_url: str, lifecycle: Lifecycle, row_id: str, attempt: int, lease_seconds: float
    ) -> None:
        self.database_url, self.lifecycle, self.row_id = database_url, lifecycle, row_id
        self.attempt, self.lease_seconds = attempt, lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_until_stopped, name=f"lease-{row_id}", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def renewing(self) -> bool:
        return self._thread.is_alive()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                with transaction(self.database_url) as session:
                    if not self.lifecycle.renew_lease(session, self.row_id, self.lease_seconds, self.attempt):
                        log.info("lease.released", id=self.row_id, attempt=self.attempt)
                        return  # cancelled, finished or re-queued: nothing left to keep
            except Exception:  # a database blip: the next renewal may work, and steps renew too
                log.warning("lease.renew_failed", id=self.row_id, exc_info=True)
