"""Per-key rate limits: past its requests per minute a key gets 429 with Retry-After in OpenAI's shape (the SDK's
RateLimitError, which it retries after that wait); other keys go on; Redis being down lets requests through."""

import time
from collections.abc import Iterator

import openai
import pytest

from app.config import Settings
from app.main import create_app
from app.orgs.rate_limit import WINDOW_SECONDS, RateLimiter
from tests.conftest import new_org_key, sdk_client, serving

LIMIT = 5


@pytest.fixture(scope="module")
def limited_server(settings: Settings) -> Iterator[str]:
    with serving(create_app(settings.model_copy(update={"rate_limit_per_minute": LIMIT}))) as url:
        yield url


def test_a_key_past_its_limit_gets_429_with_retry_after_and_other_keys_go_on(
    limited_server: str, settings: Settings
) -> None:
    if time.time() % WINDOW_SECONDS > WINDOW_SECONDS - 5:  # all requests of the test in one counting window
        time.sleep(WINDOW_SECONDS - time.time() % WINDOW_SECONDS)
    busy = sdk_client(limited_server, new_org_key(settings, "rate-busy"))
    other = sdk_client(limited_server, new_org_key(settings, "rate-other"))

    for _ in range(LIMIT):
        busy.models.list()
    with pytest.raises(openai.RateLimitError) as refused:
        busy.models.list()

    retry_after = int(refused.value.response.headers["retry-after"])
    assert 1 <= retry_after <= WINDOW_SECONDS
    assert refused.value.code == "rate_limit_exceeded" and f"Limit {LIMIT}" in refused.value.message
    assert other.models.list().data  # the limit is per key


def test_redis_down_lets_requests_through() -> None:
    limiter = RateLimiter("redis://127.0.0.1:1/0", per_minute=1)
    limiter.charge("digest")
    limiter.charge("digest")  # over the limit, but nothing counts: no refusal
