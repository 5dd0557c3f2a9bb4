"""Background work runs nicer than requests: the thread that yields is lowered, the others are not; the API's child
processes are lowered."""

import os
import threading

from app.api.files.validation_process import ValidationProcess
from app.core.niceness import yield_cpu
from app.core.settings import Settings


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


def test_an_upload_is_validated_at_the_background_niceness() -> None:
    """The API's child processes (upload validation, data reports) run below its requests."""
    validator = ValidationProcess(Settings(background_niceness=7))
    try:
        validator.feed_chunk(b'{"prompt": "q", "completion": "a"}\n')  # answered: the child is past its start
        assert validator.pid is not None
        assert os.getpriority(os.PRIO_PROCESS, validator.pid) == max(_priority(), 7)
    finally:
        validator.close()
