"""One transaction per request, committed by the session dependency when the route returns: what must follow the
commit (deleting an object, evicting an adapter) happens only once the change is stored, and what a transaction
that does not commit leaves behind (an object stored for a row that is not) is removed."""

from collections.abc import Iterator
from contextlib import contextmanager

import openai
import pytest
import sqlalchemy.exc
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.deps import get_backend
from app.api.main import create_app
from app.core.db import transaction
from app.core.settings import Settings
from app.core.storage import store_for
from app.core.tables import FileTokenStats, FineTunedModel, UploadPart
from tests.helpers.datasets import chat_jsonl
from tests.helpers.jobs import finished_job_with_model
from tests.helpers.reports import finished_report
from tests.helpers.storage import stored_state


class RecordingBackend:
    """Stands in for the inference backend: records the adapters it is told to forget."""

    def __init__(self) -> None:
        self.evicted: list[str] = []

    def evict(self, adapter_name: str) -> None:
        self.evicted.append(adapter_name)


@contextmanager
def api(settings: Settings, org_key: str, backend: RecordingBackend | None = None) -> Iterator[TestClient]:
    """The API in this test's hands, with `backend` in place of the inference backend."""
    app = create_app(settings)
    if backend is not None:
        app.dependency_overrides[get_backend] = lambda: backend
    with TestClient(app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {org_key}"}) as client:
        yield client


@contextmanager
def commits_failing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Within the block, every request's commit fails, as when the database goes away between a route's work and
    its commit. Only a request's session commits with `Session.commit`: `transaction()` blocks, which the key
    lookup and the tests' own reads use, commit their own way."""

    def database_gone(self: Session) -> None:
        raise sqlalchemy.exc.OperationalError("COMMIT", None, ConnectionError("the database went away"))

    with monkeypatch.context() as patch:
        patch.setattr(Session, "commit", database_gone)
        yield


def _model(settings: Settings, client: openai.OpenAI) -> tuple[str, str]:
    """A fine-tuned model of the client's organisation and its adapter prefix, holding one object."""
    _, model_id, prefix = finished_job_with_model(settings, client)
    return model_id, prefix


def _deleted(settings: Settings, model_id: str) -> bool | None:
    with transaction(settings.require("database_url")) as session:
        return session.scalar(select(FineTunedModel.deleted).where(FineTunedModel.id == model_id))


def _upload_objects(settings: Settings, upload_id: str) -> list[str]:
    return [key for key in store_for(settings).list_keys("orgs/") if f"/uploads/{upload_id}/" in key]


def test_a_deleted_model_leaves_memory_and_storage_once_its_deletion_is_committed(
    settings: Settings, client: openai.OpenAI, org_key: str
) -> None:
    model_id, prefix = _model(settings, client)
    backend = RecordingBackend()
    with api(settings, org_key, backend) as http:
        answer = http.delete(f"/v1/models/{model_id}")
    assert answer.status_code == 200 and answer.json() == {"id": model_id, "object": "model", "deleted": True}
    assert _deleted(settings, model_id) is True
    assert backend.evicted == [prefix]
    assert list(store_for(settings).list_keys(prefix)) == []
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(model_id)


def test_a_model_deletion_that_is_not_committed_evicts_nothing_and_keeps_the_adapter(
    settings: Settings, client: openai.OpenAI, org_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id, prefix = _model(settings, client)
    backend = RecordingBackend()
    with commits_failing(monkeypatch), api(settings, org_key, backend) as http:
        answer = http.delete(f"/v1/models/{model_id}")
    assert answer.status_code == 503 and "database" in answer.json()["error"]["message"]
    assert _deleted(settings, model_id) is False
    assert backend.evicted == []
    assert list(store_for(settings).list_keys(prefix)) == [f"{prefix}/adapter_config.json"]


def test_a_deleted_file_loses_its_object_once_the_deletion_is_committed(
    settings: Settings, client: openai.OpenAI
) -> None:
    before = stored_state(settings)
    uploaded = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune")
    assert stored_state(settings) == (before[0] + 1, before[1] + 1)
    client.files.delete(uploaded.id)
    assert stored_state(settings) == before  # neither the row nor its object


def test_a_file_deletion_that_is_not_committed_keeps_the_object(
    settings: Settings, client: openai.OpenAI, org_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploaded = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune")
    before = stored_state(settings)
    with commits_failing(monkeypatch), api(settings, org_key) as http:
        assert http.delete(f"/v1/files/{uploaded.id}").status_code == 503
    assert stored_state(settings) == before
    assert client.files.content(uploaded.id).read() == chat_jsonl()


def test_an_upload_whose_row_is_not_committed_leaves_no_object(
    settings: Settings, org_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = stored_state(settings)
    with commits_failing(monkeypatch), api(settings, org_key) as http:
        answer = http.post("/v1/files", files={"file": ("t.jsonl", chat_jsonl())}, data={"purpose": "fine-tune"})
    assert answer.status_code == 503 and answer.headers["retry-after"]
    assert stored_state(settings) == before


def test_a_part_whose_row_is_not_committed_leaves_no_object(
    settings: Settings, client: openai.OpenAI, org_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = client.uploads.create(bytes=100, filename="t.jsonl", mime_type="application/jsonl", purpose="fine-tune")
    with commits_failing(monkeypatch), api(settings, org_key) as http:
        answer = http.post(f"/v1/uploads/{upload.id}/parts", files={"data": ("part", b'{"a": 1}\n')})
    assert answer.status_code == 503
    with transaction(settings.require("database_url")) as session:
        assert session.scalars(select(UploadPart).where(UploadPart.upload_id == upload.id)).first() is None
    assert _upload_objects(settings, upload.id) == []


def test_a_completion_that_is_not_committed_keeps_the_parts_and_leaves_no_file(
    settings: Settings, client: openai.OpenAI, org_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = chat_jsonl()
    upload = client.uploads.create(bytes=len(data), filename="t.jsonl", mime_type="text/plain", purpose="fine-tune")
    part = client.uploads.parts.create(upload.id, data=data)
    before = stored_state(settings)
    with commits_failing(monkeypatch), api(settings, org_key) as http:
        assert http.post(f"/v1/uploads/{upload.id}/complete", json={"part_ids": [part.id]}).status_code == 503
    assert stored_state(settings) == before  # no file row, no assembled object
    assert len(_upload_objects(settings, upload.id)) == 1  # the part is kept: the upload can still complete

    completed = client.uploads.complete(upload.id, part_ids=[part.id])
    assert completed.status == "completed" and completed.file is not None
    assert _upload_objects(settings, upload.id) == []  # deleted once the completion is committed
    assert client.files.content(completed.file.id).read() == data


def test_a_cancelled_upload_loses_its_parts_once_the_cancel_is_committed(
    settings: Settings, client: openai.OpenAI, org_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = client.uploads.create(bytes=100, filename="t.jsonl", mime_type="text/plain", purpose="fine-tune")
    client.uploads.parts.create(upload.id, data=b'{"a": 1}\n')
    with commits_failing(monkeypatch), api(settings, org_key) as http:
        assert http.post(f"/v1/uploads/{upload.id}/cancel").status_code == 503
    assert len(_upload_objects(settings, upload.id)) == 1  # not cancelled: its part stays

    assert client.uploads.cancel(upload.id).status == "cancelled"
    assert _upload_objects(settings, upload.id) == []


def test_token_counts_computed_for_a_report_are_stored(settings: Settings, client: openai.OpenAI) -> None:
    uploaded = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune")
    report = finished_report(client, uploaded.id)
    assert report["object"] == "file.report" and report["file_id"] == uploaded.id
    with transaction(settings.require("database_url")) as session:
        stored = session.scalars(select(FileTokenStats.model).where(FileTokenStats.file_id == uploaded.id))
        assert list(stored) == [settings.default_base_model]
