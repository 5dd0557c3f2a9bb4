"""Events counted where they happen: refusals by why (admission, the engine's adapter slots, apart from rate limits
and size limits), as `loraport_requests_refused_total{reason}` shows them, and outages work went on through."""

import asyncio

import pytest
import redis
from prometheus_client import REGISTRY

from app.api.generation.admission import Admission
from app.api.generation.engine_errors import http_error
from app.core.errors import Overloaded, PayloadTooLarge, QuotaExceeded
from app.core.outages import outage_tolerated
from app.serving.errors import SlotsBusy


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("loraport_requests_refused_total", {"reason": reason}) or 0.0


def test_a_full_admission_queue_is_counted_as_admission_not_rate_limit() -> None:
    async def scenario() -> Overloaded:
        admission = Admission(concurrency=1, queue_size=0, per_organization=10)
        running = await admission.enter("a")
        with pytest.raises(Overloaded) as error:
            await admission.enter("b")
        running.release()
        return error.value

    before = {reason: refused(reason) for reason in ("admission", "rate_limit")}
    error = asyncio.run(scenario())
    error.count_refusal()
    http_error(SlotsBusy("every adapter slot is in use", retry_after=1)).count_refusal()

    assert refused("admission") - before["admission"] == 2
    assert refused("rate_limit") == before["rate_limit"]


def test_limits_and_rate_limits_have_their_own_reasons() -> None:
    assert PayloadTooLarge("too big").refusal == QuotaExceeded("too many").refusal == "limit"
    assert Overloaded("slow down", retry_after=1).refusal == "rate_limit"


def test_an_outage_gone_through_is_counted_by_service_and_other_errors_are_not() -> None:
    def survived() -> float:
        return REGISTRY.get_sample_value("loraport_outages_survived_total", {"service": "the broker"}) or 0.0

    before = survived()
    with outage_tolerated("test.outage"):
        raise redis.exceptions.ConnectionError("broker down")
    with pytest.raises(ValueError), outage_tolerated("test.outage"):
        raise ValueError("a bug, not an outage")

    assert survived() - before == 1
