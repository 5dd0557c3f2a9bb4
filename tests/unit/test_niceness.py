"""Background work runs nicer than requests: the thread that yields is lowered, the others are not."""

import os
import threading

from app.api.files.report_threads import Computation, ReportThreads
from app.core.niceness import yield_cpu


def _priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_yield_cpu_sets_the_calling_thread_and_what_it_starts_to_the_niceness_once() -> None:
    seen: dict[str, int] = {}

    def background() -> None:
        yield_cpu(5)
        yield_cpu(5)  # Celery's worker_init and worker_process_init both ask, in a solo worker
        seen["background"] = _priority()
        child = threading.Thread(target=lambda: seen.__setitem__("child", _priority()))
        child.start()
        child.join()

    before = _priority()
    thread = threading.Thread(target=background)
    thread.start()
    thread.join()

    assert seen == {"background": max(before, 5), "child": max(before, 5)}
    assert _priority() == before


def test_report_threads_compute_at_the_background_niceness() -> None:
    before, done = _priority(), threading.Event()
    seen: list[int] = []

    def run() -> None:
        seen.append(_priority())
        done.set()

    ReportThreads(workers=1, niceness=7).submit(Computation(run=run, release=lambda: None))

    assert done.wait(10)
    assert seen == [max(before, 7)]
