"""Who may use the inference engine now: a bounded number of generations at once, a bounded queue behind
them, and a cap per organisation. Beyond a bound the request is refused at once with a 429 and a
`Retry-After`, rather than left to wait without limit (the SDK retries 429s by itself)."""

import asyncio
from collections import Counter

from app.core.errors import Overloaded

_RETRY_AFTER_S = 2


class Ticket:
    """A place in the engine, held from `Admission.enter` until `release` (safe to call twice)."""

    def __init__(self, admission: "Admission", organization_id: str) -> None:
        self._admission, self._organization_id, self._released = admission, organization_id, False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._leave(self._organization_id)


class Admission:
    """Used from the event loop only, so its counters need no lock."""

    def __init__(self, concurrency: int, queue_size: int, per_organization: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._queue_size, self._per_organization = queue_size, per_organization
        self._waiting = 0
        self._held: Counter[str] = Counter()  # requests running or waiting, per organisation

    async def enter(self, organization_id: str) -> Ticket:
        if self._held[organization_id] >= self._per_organization:
            raise Overloaded(
                f"Your organisation already has {self._per_organization} completion requests in progress; "
                "retry when one has finished",
                _RETRY_AFTER_S,
            )
        if self._slots.locked() and self._waiting >= self._queue_size:
            raise Overloaded("The server is busy: too many completion requests are waiting", _RETRY_AFTER_S)
        self._held[organization_id] += 1
        self._waiting += 1
        try:
            await self._slots.acquire()
        except BaseException:  # cancelled while waiting: the client went away
            self._held[organization_id] -= 1
            raise
        finally:
            self._waiting -= 1
        return Ticket(self, organization_id)

    def _leave(self, organization_id: str) -> None:
        self._held[organization_id] -= 1
        self._slots.release()
