"""Keeps a running job's lease alive from a background thread while its worker process lives.

Steps renew the lease too, but a slow first step, a long evaluation or a large checkpoint upload must not let
it lapse; a killed process stops renewing, and the reaper re-queues the job one lease later.
"""

import threading
from types import TracebackType

import structlog

from app.core import job_state
from app.core.db import transaction

log = structlog.get_logger()


class LeaseKeeper:
    """`with LeaseKeeper(...):` renews the lease every third of its length until the block ends."""

    def __init__(self, database_url: str, job_id: str, lease_seconds: int) -> None:
        self.database_url, self.job_id, self.lease_seconds = database_url, job_id, lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_until_stopped, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                with transaction(self.database_url) as session:
                    if not job_state.renew_lease(session, self.job_id, self.lease_seconds):
                        return  # cancelled or finished: nothing left to keep
            except Exception:  # a database blip: the next renewal may work, and steps renew too
                log.warning("jobs.lease.renew_failed", job_id=self.job_id, exc_info=True)
