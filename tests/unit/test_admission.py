import asyncio

import pytest

from app.api.generation.admission import Admission
from app.core.errors import Overloaded


def test_requests_beyond_the_queue_are_refused_with_a_retry_hint():
    async def scenario():
        admission = Admission(concurrency=1, queue_size=1, per_organization=10)
        running = await admission.enter("a")
        waiting = asyncio.create_task(admission.enter("b"))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            await admission.enter("c")
        running.release()
        (await waiting).release()
        (await admission.enter("c")).release()  # room again
        return refused.value

    error = asyncio.run(scenario())
    assert error.status_code == 429 and error.headers == {"Retry-After": "2"}


def test_one_organisation_cannot_hold_more_than_its_share():
    async def scenario():
        admission = Admission(concurrency=8, queue_size=8, per_organization=2)
        held = [await admission.enter("greedy"), await admission.enter("greedy")]
        with pytest.raises(Overloaded, match="organisation"):
            await admission.enter("greedy")
        other = await admission.enter("polite")  # another tenant still gets in
        held[0].release()
        held[0].release()  # releasing twice gives back one place only
        third = await admission.enter("greedy")
        with pytest.raises(Overloaded):
            await admission.enter("greedy")
        for ticket in (held[1], other, third):
            ticket.release()

    asyncio.run(scenario())


def test_a_waiter_that_gives_up_leaves_no_trace():
    async def scenario():
        admission = Admission(concurrency=1, queue_size=1, per_organization=1)
        running = await admission.enter("a")
        waiter = asyncio.create_task(admission.enter("b"))
        await asyncio.sleep(0)
        waiter.cancel()  # the client went away while queued
        with pytest.raises(asyncio.CancelledError):
            await waiter
        running.release()
        (await admission.enter("b")).release()  # neither its place in the queue nor its organisation's share leaked

    asyncio.run(scenario())


def test_one_organisation_fills_at_most_its_share_of_the_running_slots():
    async def scenario():
        admission = Admission(concurrency=4, queue_size=8, per_organization=10, share_per_organization=0.5)
        greedy = [await admission.enter("greedy") for _ in range(2)]
        queued = asyncio.create_task(admission.enter("greedy"))  # a third would exceed half of the 4 slots
        await asyncio.sleep(0)
        assert not queued.done()
        polite = await admission.enter("polite")  # another tenant gets in while the first one waits
        greedy[0].release()
        third = await queued  # a slot of its own share freed: now it runs
        for ticket in (greedy[1], third, polite):
            ticket.release()
        return admission

    admission = asyncio.run(scenario())
    assert admission.running_per_organization == 2


def test_a_waiter_over_its_share_lets_another_organisations_waiter_pass():
    async def scenario():
        admission = Admission(concurrency=2, queue_size=8, per_organization=10, share_per_organization=0.5)
        greedy = await admission.enter("greedy")
        blocker = await admission.enter("other")
        greedy_waiting = asyncio.create_task(admission.enter("greedy"))
        polite_waiting = asyncio.create_task(admission.enter("polite"))
        await asyncio.sleep(0)
        blocker.release()  # one slot frees: "greedy" already fills its share, so "polite" (queued later) gets it
        await asyncio.sleep(0)
        admitted = (greedy_waiting.done(), polite_waiting.done())
        greedy.release()
        for task in (greedy_waiting, polite_waiting):
            (await task).release()
        return admitted

    assert asyncio.run(scenario()) == (False, True)


def test_the_share_is_at_least_one_slot():
    assert (
        Admission(concurrency=1, queue_size=1, per_organization=1, share_per_organization=0.1).running_per_organization
        == 1
    )
