"""The dashboard's login cookie (audit #14): an opaque session, not the key; refused on changes sent from another
origin of the same site (another port, a sibling subdomain); Secure behind a trusted TLS proxy; no framing."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.api.deps import SESSION_COOKIE
from app.api.main import create_app
from app.core.db import transaction
from app.core.keys import digest, find_key, revoke_key
from app.core.settings import Settings
from app.core.tables import DashboardSession, StoredFile
from tests.helpers.datasets import chat_jsonl

SAME_SITE = {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:9999"}  # another port of this host
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}
UPLOAD = {"files": {"file": ("t.jsonl", chat_jsonl())}, "data": {"purpose": "fine-tune"}}


@pytest.fixture
def browser(api_base_url: str, org_key: str) -> Iterator[httpx.Client]:
    """Logged in through the form, as a browser is."""
    with httpx.Client(base_url=api_base_url, timeout=120) as client:
        assert client.post("/login", data={"api_key": org_key}).status_code == 303
        yield client


def _file_count(settings: Settings, org_key: str) -> int:
    with transaction(settings.require("database_url")) as session:
        key = find_key(session, org_key)
        assert key is not None
        return len(
            session.scalars(select(StoredFile.id).where(StoredFile.organization_id == key.organization_id)).all()
        )


def test_a_cookie_upload_from_another_origin_of_the_site_is_refused_and_stores_nothing(
    browser: httpx.Client, settings: Settings, org_key: str
) -> None:
    refused = browser.post("/v1/files", headers=SAME_SITE, **UPLOAD)  # type: ignore[arg-type]
    no_metadata = browser.post("/v1/files", **UPLOAD)  # type: ignore[arg-type]  # neither header: not the dashboard

    assert refused.status_code == 403 and refused.json()["error"]["code"] == "cross_origin_request"
    assert "dashboard's own origin" in refused.json()["error"]["message"]
    assert no_metadata.status_code == 403
    assert _file_count(settings, org_key) == 0
    assert browser.post("/v1/files", headers=SAME_ORIGIN, **UPLOAD).status_code == 200  # type: ignore[arg-type]
    assert _file_count(settings, org_key) == 1


def test_a_cookie_cancel_from_another_origin_leaves_the_job_running(
    browser: httpx.Client, client: openai.OpenAI, api_base_url: str
) -> None:
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    job_id = client.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=file_id).id
    cancel = f"/v1/fine_tuning/jobs/{job_id}/cancel"

    assert browser.post(cancel, headers=SAME_SITE).status_code == 403
    assert client.fine_tuning.jobs.retrieve(job_id).status == "queued"
    # a browser without Fetch Metadata: its Origin must name this host
    assert browser.post(cancel, headers={"Origin": api_base_url}).json()["status"] == "cancelled"


def test_bearer_requests_are_not_affected(http: httpx.Client) -> None:
    assert http.post("/v1/files", headers=SAME_SITE, **UPLOAD).status_code == 200  # type: ignore[arg-type]


def test_the_cookie_is_not_the_key_and_stops_at_logout_and_at_revocation(
    api_base_url: str, settings: Settings, org_key: str
) -> None:
    def login() -> str:
        answer = httpx.post(f"{api_base_url}/login", data={"api_key": org_key})
        return answer.cookies[SESSION_COOKIE]

    def models(token: str) -> int:
        return httpx.get(f"{api_base_url}/v1/models", cookies={SESSION_COOKIE: token}).status_code

    logged_out, revoked = login(), login()
    assert org_key not in (logged_out, revoked) and logged_out != revoked
    with transaction(settings.require("database_url")) as session:
        stored = session.scalars(select(DashboardSession.token_hash)).all()
    assert logged_out not in stored and revoked not in stored  # kept as digests

    assert models(logged_out) == 200
    out = httpx.post(f"{api_base_url}/logout", cookies={SESSION_COOKIE: logged_out}, headers=SAME_ORIGIN)
    assert out.status_code == 303
    assert models(logged_out) == 401  # a copy of the cookie kept after logout is worth nothing
    assert models(revoked) == 200

    with transaction(settings.require("database_url")) as session:
        key = find_key(session, org_key)
        assert key is not None
        revoke_key(session, key.id)
    assert models(revoked) == 401


@pytest.mark.parametrize("trusted", [False, True])
def test_the_cookie_is_secure_behind_a_tls_proxy_only_when_trusted(
    settings: Settings, org_key: str, trusted: bool
) -> None:
    app = create_app(settings.model_copy(update={"trust_forwarded_proto": trusted}))
    with TestClient(app, follow_redirects=False) as api:
        plain = api.post("/login", data={"api_key": org_key}).headers["set-cookie"]
        proxied = api.post("/login", data={"api_key": org_key}, headers={"X-Forwarded-Proto": "https"}).headers[
            "set-cookie"
        ]

    assert "secure" not in plain.lower()
    assert ("secure" in proxied.lower()) is trusted


def test_pages_refuse_to_be_framed(browser: httpx.Client, api_base_url: str) -> None:
    for answer in (httpx.get(f"{api_base_url}/login"), browser.get("/jobs"), browser.get("/jobs/ftjob-none")):
        assert answer.headers["x-frame-options"] == "DENY", answer.url
        assert answer.headers["content-security-policy"] == "frame-ancestors 'none'", answer.url


def test_an_expired_login_is_refused_and_cleared_at_the_next_login(
    api_base_url: str, settings: Settings, org_key: str
) -> None:
    token = httpx.post(f"{api_base_url}/login", data={"api_key": org_key}).cookies[SESSION_COOKIE]
    with transaction(settings.require("database_url")) as session:
        row = session.get_one(DashboardSession, digest(token))
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)

    assert httpx.get(f"{api_base_url}/v1/models", cookies={SESSION_COOKIE: token}).status_code == 401
    httpx.post(f"{api_base_url}/login", data={"api_key": org_key})
    with transaction(settings.require("database_url")) as session:
        assert session.get(DashboardSession, digest(token)) is None
