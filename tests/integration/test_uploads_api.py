"""Large files: OpenAI's Uploads API (the SDK's chunked helper), streaming limits and interrupted uploads."""

import contextlib
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.api.uploads import service as uploads_service
from app.core.db import transaction
from app.core.settings import Settings
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.storage import stored_state
from tests.helpers.waiting import eventually


def test_sdk_chunked_upload_becomes_a_processed_file(client: openai.OpenAI, settings: Settings) -> None:
    data = chat_jsonl() * 50
    upload = client.uploads.upload_file_chunked(
        file=data, filename="big.jsonl", bytes=len(data), mime_type="application/jsonl", purpose="fine-tune",
        part_size=len(data) // 3 + 1,
    )  # fmt: skip
    assert upload.status == "completed" and upload.file is not None
    assert upload.file.status == "processed" and upload.file.bytes == len(data)
    assert client.files.content(upload.file.id).read() == data
    # the parts are gone once assembled
    assert not list(store_keys(settings, f"orgs/{client.files.retrieve(upload.file.id).id}"))
    assert not [key for key in store_keys(settings, "orgs/") if "/uploads/" in key]


def store_keys(settings: Settings, prefix: str) -> list[str]:
    from app.core.storage import store_for

    return list(store_for(settings).list_keys(prefix))


def test_parts_in_the_wrong_order_are_validated_as_assembled(client: openai.OpenAI) -> None:
    data = chat_jsonl()
    middle = data.index(b"\n", len(data) // 2) + 5  # cut inside a line
    upload = client.uploads.create(
        bytes=len(data), filename="t.jsonl", mime_type="application/jsonl", purpose="fine-tune"
    )
    first = client.uploads.parts.create(upload.id, data=data[:middle])
    second = client.uploads.parts.create(upload.id, data=data[middle:])
    with pytest.raises(openai.BadRequestError) as error:
        client.uploads.complete(upload.id, part_ids=[second.id, first.id])
    assert [(item["line"], item["code"]) for item in error.value.body["validation"]["errors"]] == [
        (1, "invalid_json"),
        (len(TICKETS) + 1, "invalid_json"),
    ]
    assert client.uploads.complete(upload.id, part_ids=[first.id, second.id]).status == "completed"


def test_upload_size_mismatch_and_cancel(client: openai.OpenAI, settings: Settings) -> None:
    upload = client.uploads.create(bytes=10, filename="t.jsonl", mime_type="application/jsonl", purpose="fine-tune")
    with pytest.raises(openai.BadRequestError):
        client.uploads.parts.create(upload.id, data=b"x" * 11)
    part = client.uploads.parts.create(upload.id, data=b"x" * 4)
    with pytest.raises(openai.BadRequestError) as error:
        client.uploads.complete(upload.id, part_ids=[part.id])
    assert "4 bytes" in error.value.message
    assert client.uploads.cancel(upload.id).status == "cancelled"
    assert not [key for key in store_keys(settings, "orgs/") if upload.id in key]
    with pytest.raises(openai.BadRequestError):
        client.uploads.parts.create(upload.id, data=b"x")


def test_another_organisation_cannot_touch_an_upload(client: openai.OpenAI, other_client: openai.OpenAI) -> None:
    upload = client.uploads.create(bytes=4, filename="t.jsonl", mime_type="application/jsonl", purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        other_client.uploads.parts.create(upload.id, data=b"abcd")
    with pytest.raises(openai.NotFoundError):
        other_client.uploads.cancel(upload.id)


def test_a_chunked_upload_over_the_limit_is_stopped_while_streaming(settings: Settings, org_key: str) -> None:
    """No Content-Length to check up front: the byte count stops it, and the partial object is removed."""
    before = stored_state(settings)

    def body():  # type: ignore[no-untyped-def]
        yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
        for _ in range(20):
            yield chat_jsonl()
        yield b"\r\n--b--\r\n"

    with TestClient(create_app(settings.model_copy(update={"max_upload_bytes": 2000}))) as api:
        response = api.post(
            "/v1/files",
            headers={"Authorization": f"Bearer {org_key}", "Content-Type": "multipart/form-data; boundary=b"},
            content=body(),
        )
    assert response.status_code == 413, response.text
    assert stored_state(settings) == before


def test_a_client_that_disconnects_half_way_leaves_nothing(api_base_url: str, org_key: str, settings: Settings) -> None:
    before = stored_state(settings)
    payload = chat_jsonl() * 20_000  # ~12 MB: more than one S3 part is under way when the client goes
    head = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
    )
    host, port = api_base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(
            b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {org_key}\r\n".encode()
            + b"Content-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {len(head) + len(payload) + 10}\r\n\r\n".encode()
            + head
            + payload[: len(payload) * 3 // 4]
        )
    eventually(
        lambda: stored_state(settings) == before and not pending_multipart_uploads(settings),
        timeout=20,
        what="the interrupted upload to leave no object, row or multipart upload",
    )
    assert httpx.get(f"{api_base_url}/healthz").status_code == 200


def pending_multipart_uploads(settings: Settings) -> list[dict]:
    from app.core.storage import store_for

    store = store_for(settings)
    return store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])


def _objects_of(settings: Settings, upload_id: str) -> list[str]:
    return [key for key in store_keys(settings, "orgs/") if f"/uploads/{upload_id}/" in key]


def _waiting_on_a_lock(settings: Settings) -> int:
    with transaction(settings.require("database_url")) as session:
        waiting = sqlalchemy.text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return session.execute(waiting).scalar_one()


def test_two_concurrent_completions_make_one_file(
    client: openai.OpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit #18: the upload row was not locked, so two completions each assembled a file."""
    data = chat_jsonl()
    upload = client.uploads.create(bytes=len(data), filename="t.jsonl", mime_type="text/plain", purpose="fine-tune")
    part = client.uploads.parts.create(upload.id, data=data)
    assembling, release, entered = threading.Event(), threading.Event(), []
    assemble = uploads_service._assemble

    def held_assemble(*args: Any) -> Any:
        entered.append(args)
        assembling.set()
        release.wait(timeout=60)
        return assemble(*args)

    monkeypatch.setattr(uploads_service, "_assemble", held_assemble)

    def complete() -> object:
        try:
            return client.uploads.complete(upload.id, part_ids=[part.id])
        except openai.BadRequestError as error:
            return error

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(complete)
        assert assembling.wait(timeout=60)
        second = pool.submit(complete)
        # The second completion waits for the first's lock on the upload (or, unlocked, assembles a file of its own).
        eventually(lambda: len(entered) == 2 or _waiting_on_a_lock(settings) > 0, what="the second completion")
        release.set()
        answers = [first.result(), second.result()]

    completed = [answer for answer in answers if not isinstance(answer, Exception)]
    refused = [answer for answer in answers if isinstance(answer, openai.BadRequestError)]
    assert len(completed) == 1 and len(refused) == 1, answers
    assert "is completed" in refused[0].message
    assert [file.id for file in client.files.list()] == [completed[0].file.id]  # type: ignore[attr-defined]


def test_a_part_recorded_after_its_upload_was_cancelled_is_refused_and_deleted(
    client: openai.OpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit #18: cancel listed the parts before a part streaming meanwhile was recorded, which then stayed forever."""
    upload = client.uploads.create(bytes=100, filename="t.jsonl", mime_type="text/plain", purpose="fine-tune")
    streamed, cancelled = threading.Event(), threading.Event()
    record = uploads_service.record_part

    def after_cancel(*args: Any) -> Any:
        streamed.set()
        cancelled.wait(timeout=60)
        return record(*args)

    monkeypatch.setattr(uploads_service, "record_part", after_cancel)

    def add_part() -> object:
        try:
            return client.uploads.parts.create(upload.id, data=b'{"a": 1}\n')
        except openai.BadRequestError as error:
            return error

    with ThreadPoolExecutor(1) as pool:
        part = pool.submit(add_part)
        assert streamed.wait(timeout=60)  # its bytes are in S3; its row is not recorded yet
        assert client.uploads.cancel(upload.id).status == "cancelled"
        cancelled.set()
        refused = part.result()

    assert isinstance(refused, openai.BadRequestError) and "is cancelled" in refused.message
    assert _objects_of(settings, upload.id) == []


def test_concurrent_parts_cannot_exceed_the_declared_size(
    client: openai.OpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit #18: each part checked the room left before it streamed, so two parts at once could both fit."""
    upload = client.uploads.create(bytes=100, filename="t.jsonl", mime_type="text/plain", purpose="fine-tune")
    both_streamed = threading.Barrier(2)
    record = uploads_service.record_part

    def together(*args: Any) -> Any:
        with contextlib.suppress(threading.BrokenBarrierError):
            both_streamed.wait(timeout=30)  # each has passed the first check of the room left
        return record(*args)

    monkeypatch.setattr(uploads_service, "record_part", together)

    def add_part() -> object:
        try:
            return client.uploads.parts.create(upload.id, data=b"x" * 60)
        except openai.BadRequestError as error:
            return error

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: add_part(), range(2)))

    refused = [answer for answer in answers if isinstance(answer, openai.BadRequestError)]
    assert len(refused) == 1 and "exceed the upload's declared 100 bytes" in refused[0].message, answers
    assert len(_objects_of(settings, upload.id)) == 1
