"""Background work yields the CPU to requests: on a host shared by the API and a training worker (`make up`, a
small deployment), a chat waits behind a training step or a data report only as long as the scheduler makes it."""

import os
import threading

import structlog

log = structlog.get_logger()


def yield_cpu(niceness: int) -> None:
    """Runs the calling thread at nice `niceness` at least (Linux nice values are per thread, and threads started
    afterwards by this one inherit it); asked twice, it stays there. A platform that refuses leaves it as it was."""
    if niceness <= 0:
        return
    thread = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, max(current, min(19, niceness)))
    except (AttributeError, OSError) as error:
        log.warning("niceness.unchanged", error=type(error).__name__)
