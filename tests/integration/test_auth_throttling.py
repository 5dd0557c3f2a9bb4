"""Failed authentications are throttled per client address (audit #19): guessing keys gets 429 before any lookup,
on the API and on the dashboard's login and pages alike."""

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.api.deps import SESSION_COOKIE
from app.api.main import create_app
from app.core.settings import Settings

LIMIT = 3


@pytest.fixture
def guesser(settings: Settings) -> Iterator[TestClient]:
    """An app allowing `LIMIT` failures a minute, and a client from an address of its own."""
    app = create_app(settings.model_copy(update={"failed_auth_per_minute": LIMIT}))
    address = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    with TestClient(app, client=(address, 50000), follow_redirects=False) as client:
        yield client


def _wrong(client: TestClient) -> int:
    return client.get("/v1/models", headers={"Authorization": f"Bearer lp_{uuid.uuid4().hex}"}).status_code


def test_an_address_past_the_limit_of_failures_gets_429_even_with_a_good_key(
    guesser: TestClient, settings: Settings, org_key: str
) -> None:
    assert [_wrong(guesser) for _ in range(LIMIT)] == [401] * LIMIT

    refused = guesser.get("/v1/models", headers={"Authorization": f"Bearer {org_key}"})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "too_many_failed_authentications"
    # another address is not held back
    with TestClient(create_app(settings), client=("10.255.0.1", 1)) as other:
        assert other.get("/v1/models", headers={"Authorization": f"Bearer {org_key}"}).status_code == 200


def test_requests_without_a_key_are_not_counted_as_failures(guesser: TestClient, org_key: str) -> None:
    assert [guesser.get("/v1/models").status_code for _ in range(LIMIT + 2)] == [401] * (LIMIT + 2)
    assert guesser.get("/v1/models", headers={"Authorization": f"Bearer {org_key}"}).status_code == 200


def test_the_dashboard_login_and_pages_are_throttled_too(guesser: TestClient, org_key: str) -> None:
    logins = [guesser.post("/login", data={"api_key": f"lp_{uuid.uuid4().hex}"}).status_code for _ in range(LIMIT)]
    assert logins == [401] * LIMIT

    assert guesser.post("/login", data={"api_key": org_key}).status_code == 429
    page = guesser.get("/jobs", cookies={SESSION_COOKIE: "a-guessed-session"})
    assert page.status_code == 429 and "Too many failed authentications" in page.text
