"""Faults in the services the API stands on, injected into real servers of the test's own (a PostgreSQL and an
S3 server started here, so the suite's shared ones stay up): while one is down, requests get a 503 with
Retry-After in OpenAI's error shape (the SDK retries those), never a 500 or a hang; once it is back, the same API
process serves again without a restart, and nothing half-stored is left behind."""

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
from sqlalchemy import delete

from app.api.main import create_app
from app.cli.embedded.postgres import EmbeddedPostgres
from app.cli.embedded.seaweed import SeaweedS3
from app.core.bootstrap import prepare
from app.core.db import transaction
from app.core.settings import Settings
from app.core.tables import Organization
from tests.helpers.datasets import chat_jsonl
from tests.helpers.services import new_org_key, serving

RECOVERY_TIMEOUT_S = 30


def _upload(api: httpx.Client, name: str) -> httpx.Response:
    return api.post("/v1/files", files={"file": (name, chat_jsonl())}, data={"purpose": "fine-tune"})


def _assert_retryable(answer: httpx.Response, service: str) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"].isdigit()
    error = answer.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "service_unavailable"
    assert service in error["message"].lower()


def _until_served(request: Callable[[], httpx.Response]) -> httpx.Response:
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while (answer := request()).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    return answer


@contextmanager
def _api(settings: Settings, timeout: float, **services: str) -> Iterator[httpx.Client]:
    """A client of an API on these services (migrated, bucket made), with the key of a new organisation there; the
    organisation goes afterwards, so the suite's database keeps no row pointing into a server that is gone."""
    own = settings.model_copy(update={**services, "s3_bucket": f"faults-{uuid.uuid4().hex[:8]}"})
    prepare(own)
    name = f"faults-{uuid.uuid4().hex[:8]}"
    key = new_org_key(own, name)
    with serving(create_app(own)) as url, httpx.Client(base_url=url, timeout=timeout) as api:
        api.headers["Authorization"] = f"Bearer {key}"
        yield api
    with transaction(own.require("database_url")) as session:
        session.execute(delete(Organization).where(Organization.name == name))


def test_a_database_restart_mid_traffic_is_503s_then_service_without_an_api_restart(
    settings: Settings, own_postgres: EmbeddedPostgres
) -> None:
    with _api(settings, 30, database_url=own_postgres.url) as api:
        assert _upload(api, "before.jsonl").status_code == 200
        statuses: list[int] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(base_url=api.base_url, timeout=30, headers=api.headers) as other:
                while not stop.is_set():
                    statuses.append(other.get("/v1/files").status_code)

        client_thread = threading.Thread(target=traffic)
        client_thread.start()
        try:
            own_postgres.stop()
            _assert_retryable(api.get("/v1/files"), "database")
            _assert_retryable(_upload(api, "during.jsonl"), "database")
            assert api.get("/readyz").json()["checks"]["database"].startswith("unavailable")
            own_postgres.start()
            served = _until_served(lambda: api.get("/v1/files"))
        finally:
            stop.set()
            client_thread.join()

    assert served.status_code == 200
    assert [row["filename"] for row in served.json()["data"]] == ["before.jsonl"]  # the refused upload left no row
    assert set(statuses) <= {200, 503} and 503 in statuses and statuses[-1] == 200


def test_storage_down_is_a_retryable_503_and_leaves_no_row_without_its_object(
    settings: Settings, own_s3: SeaweedS3
) -> None:
    with _api(settings, 60, s3_endpoint_url=own_s3.url) as api:
        stored = _upload(api, "before.jsonl").json()["id"]

        own_s3.stop()
        _assert_retryable(_upload(api, "during.jsonl"), "storage")
        _assert_retryable(api.get(f"/v1/files/{stored}/content"), "storage")
        own_s3.start()
        after = _until_served(lambda: _upload(api, "after.jsonl"))

        assert after.status_code == 200, after.text
        listed = [row["filename"] for row in api.get("/v1/files").json()["data"]]
        assert sorted(listed) == ["after.jsonl", "before.jsonl"]
        assert api.get(f"/v1/files/{stored}/content").content == chat_jsonl()
