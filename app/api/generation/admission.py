"""Who may use the inference engine now: a bounded number of generations at once, a bounded queue behind
them, and caps per organisation. Beyond a bound the request is refused at once with a 429 and a
`Retry-After`, rather than left to wait without limit (the SDK retries 429s by itself).

Two caps per organisation: the requests it may hold (running and waiting, `per_organization`), and the share of
the running slots it may fill (`share_per_organization`). The second keeps one tenant from holding every slot:
its further requests wait while another organisation's request, queued behind them, is admitted first. With
`shared` holds, the first cap counts the organisation's requests in every API process (`shared_holds`)."""

import asyncio
from collections import Counter, deque

from app.api.generation.shared_holds import SharedHolds
from app.core.errors import Overloaded

_RETRY_AFTER_S = 2


class Ticket:
    """A place in the engine, held from `Admission.enter` until `release` (safe to call twice)."""

    def __init__(self, admission: "Admission", organization_id: str, hold: str | None) -> None:
        self._admission, self._organization_id, self._hold, self._released = admission, organization_id, hold, False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._leave(self._organization_id, self._hold)


class Admission:
    """Used from the event loop only, so its counters need no lock."""

    def __init__(
        self,
        concurrency: int,
        queue_size: int,
        per_organization: int,
        share_per_organization: float = 1.0,
        shared: SharedHolds | None = None,
    ) -> None:
        self._concurrency, self._queue_size, self._per_organization = concurrency, queue_size, per_organization
        self._shared = shared
        self.running_per_organization = max(1, round(share_per_organization * concurrency))
        self._running: Counter[str] = Counter()  # generations running, per organisation
        self._held: Counter[str] = Counter()  # requests running or waiting, per organisation
        self._queue: deque[tuple[str, asyncio.Future[None]]] = deque()  # waiters, first come first

    async def enter(self, organization_id: str) -> Ticket:
        if self._held[organization_id] >= self._per_organization:
            raise _too_many(self._per_organization)
        if not self._may_run(organization_id) and len(self._queue) >= self._queue_size:
            raise Overloaded(
                "The server is busy: too many completion requests are waiting", _RETRY_AFTER_S, refusal="admission"
            )
        hold = await self._hold(organization_id)
        if self._may_run(organization_id):  # then none of its requests waits: `_dispatch` would have let it in
            self._start(organization_id)
            return Ticket(self, organization_id, hold)
        self._held[organization_id] += 1
        admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((organization_id, admitted))
        try:
            await admitted
        except BaseException:  # cancelled while waiting: the client went away
            if admitted.done() and not admitted.cancelled():  # admitted just before: give the slot back
                self._leave(organization_id, hold)
            else:
                self._queue.remove((organization_id, admitted))
                self._held[organization_id] -= 1
                self._release_hold(organization_id, hold)
            raise
        return Ticket(self, organization_id, hold)

    async def _hold(self, organization_id: str) -> str | None:
        """The organisation's hold across API processes (None without shared holds); `Overloaded` at its cap."""
        if self._shared is None:
            return None
        hold = await asyncio.to_thread(self._shared.acquire, organization_id, self._per_organization)
        if hold is None:
            raise _too_many(self._per_organization, "across the deployment's API processes")
        return hold

    def _release_hold(self, organization_id: str, hold: str | None) -> None:
        if self._shared is not None and hold is not None:
            self._shared.release(organization_id, hold)

    def _may_run(self, organization_id: str) -> bool:
        return (
            self._running.total() < self._concurrency and self._running[organization_id] < self.running_per_organization
        )

    def _start(self, organization_id: str) -> None:
        self._running[organization_id] += 1
        self._held[organization_id] += 1

    def _leave(self, organization_id: str, hold: str | None) -> None:
        self._held[organization_id] -= 1
        self._running[organization_id] -= 1
        self._release_hold(organization_id, hold)
        self._dispatch()

    def _dispatch(self) -> None:
        """Admit waiters in order, skipping those whose organisation already fills its share."""
        for organization_id, admitted in list(self._queue):
            if self._running.total() >= self._concurrency:
                return
            if self._running[organization_id] < self.running_per_organization:
                self._queue.remove((organization_id, admitted))
                self._running[organization_id] += 1  # its `held` was counted when it began to wait
                admitted.set_result(None)


def _too_many(cap: int, where: str = "") -> Overloaded:
    return Overloaded(
        f"Your organisation already has {cap} completion requests in progress{' ' + where if where else ''}; "
        "retry when one has finished",
        _RETRY_AFTER_S,
        refusal="admission",
    )
