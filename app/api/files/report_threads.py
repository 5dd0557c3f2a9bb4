"""The API process's report threads: a few daemon threads fed by a queue, each waiting on one computation at a time
(the computing itself is done by a child process: `report_runs`).

Daemon threads, unlike a `ThreadPoolExecutor`'s, do not hold up the process's exit until a 40-minute token count
ends; what they were computing, or had queued, is given back at exit instead (`release`), so that the next request
claims it again at once rather than after `report_stale_after_seconds`.
"""

import atexit
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import structlog

log = structlog.get_logger()


@dataclass(frozen=True, eq=False)
class Computation:
    run: Callable[[], None]
    release: Callable[[], None]  # gives the claim back when `run` cannot finish


class ReportThreads:
    def __init__(self, workers: int) -> None:
        self._queue: queue.SimpleQueue[Computation] = queue.SimpleQueue()
        self._unfinished: set[Computation] = set()
        self._lock = threading.Lock()
        for number in range(workers):
            threading.Thread(target=self._work, name=f"file-report-{number}", daemon=True).start()
        atexit.register(self.release_unfinished)

    def submit(self, computation: Computation) -> None:
        with self._lock:
            self._unfinished.add(computation)
        self._queue.put(computation)

    def _work(self) -> None:
        while True:
            computation = self._queue.get()
            try:
                computation.run()
            except Exception:  # nobody waits on it: say it here
                log.exception("files.report.unexpected_error")
            finally:
                with self._lock:
                    self._unfinished.discard(computation)

    def release_unfinished(self) -> None:
        """Gives back the claims of what is queued or running; each is then computed by whoever asks next."""
        with self._lock:
            left, self._unfinished = self._unfinished, set()
        for computation in left:
            try:
                computation.release()
            except Exception:
                log.warning("files.report.release_failed", exc_info=True)


@lru_cache
def report_threads(workers: int) -> ReportThreads:
    """This process's report threads (started on first use)."""
    return ReportThreads(workers)
