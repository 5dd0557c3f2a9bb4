"""An organisation's cap of completion requests in progress holds across API processes: two processes' admissions,
sharing the deployment's Redis, let it hold its cap in all, not in each; a dead process's holds lapse; Redis down
lets requests through."""

import asyncio
import time
import uuid

import pytest

from app.api.generation.admission import Admission
from app.api.generation.shared_holds import SharedHolds
from app.core.errors import Overloaded
from app.core.settings import Settings


def two_processes(redis_url: str, cap: int, hold_seconds: float = 60) -> tuple[Admission, Admission]:
    """The admissions of two API processes, each with room for many more requests than the cap."""
    return tuple(  # type: ignore[return-value]
        Admission(16, 16, cap, 1.0, SharedHolds(redis_url, hold_seconds)) for _ in range(2)
    )


def test_an_organisation_holds_its_cap_across_processes_not_in_each(settings: Settings) -> None:
    org, other = f"org-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    first, second = two_processes(settings.require("redis_url"), cap=2)

    async def scenario() -> None:
        held = [await first.enter(org), await second.enter(org)]
        with pytest.raises(Overloaded, match="across the deployment's API processes"):
            await second.enter(org)
        with pytest.raises(Overloaded):
            await first.enter(org)
        (await second.enter(other)).release()  # another organisation is not held back
        held[0].release()
        held.append(await second.enter(org))  # the place given back in one process is taken in the other
        for ticket in held[1:]:
            ticket.release()

    asyncio.run(scenario())


def test_the_holds_of_a_process_that_died_lapse(settings: Settings) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    dead, alive = two_processes(settings.require("redis_url"), cap=1, hold_seconds=0.5)

    async def scenario() -> None:
        await dead.enter(org)  # never released: its process died
        with pytest.raises(Overloaded):
            await alive.enter(org)
        time.sleep(0.6)
        (await alive.enter(org)).release()

    asyncio.run(scenario())


def test_redis_down_lets_requests_through_under_each_process_s_own_cap() -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    first, _ = two_processes("redis://127.0.0.1:1/0", cap=1)  # nothing listens on port 1

    async def scenario() -> None:
        ticket = await first.enter(org)
        with pytest.raises(Overloaded):
            await first.enter(org)  # this process's own count still holds
        ticket.release()
        ticket.release()

    asyncio.run(scenario())
