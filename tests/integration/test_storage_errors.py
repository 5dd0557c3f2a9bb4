"""Object storage that answers every request with an error instead of refusing the connection, as SeaweedFS does
while it stops: a 5xx that persists after botocore's retries is the store being unavailable. A job is given back
to resume later (and fails naming object storage on its last attempt), never failed as a training error; the API
answers 503 with Retry-After. An answer about the request (NoSuchKey) is no outage."""

from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.api.main import create_app
from app.core.db import transaction
from app.core.outages import unavailable_service
from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.core.tables import FineTuningJob, JobEvent
from app.ml.base_models.from_settings import registry_from_settings
from tests.helpers.datasets import chat_jsonl
from tests.helpers.failing_s3 import FailingS3
from worker.job_runner import run_job


def _against(settings: Settings, server: FailingS3) -> Settings:
    return settings.model_copy(update={"s3_endpoint_url": server.url})


def _events(settings: Settings, job_id: str) -> list[str]:
    with transaction(settings.require("database_url")) as session:
        return list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def test_every_store_operation_fails_as_an_outage_once_its_retries_are_spent(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with FailingS3(500, "InternalError") as server:
        store = ObjectStore(_against(settings, server))
        operations: dict[str, Callable[[], object]] = {
            "head": lambda: store.head("a/key"),  # a HEAD answer has no body: its code is "500"
            "read_bytes": lambda: store.read_bytes("a/key"),
            "put_bytes": lambda: store.put_bytes("a/key", b"state"),
            "upload_directory": lambda: store.upload_directory("a/adapter", tmp_path / "adapter"),  # boto3 wraps it
            "download_prefix": lambda: store.download_prefix("a/adapter", tmp_path / "fetched"),
        }
        for name, operation in operations.items():
            with pytest.raises(Exception) as raised:
                operation()
            assert unavailable_service(raised.value) == "object storage", (name, repr(raised.value))
    assert server.requests >= 4 * len(operations)  # each asked 4 times: botocore's 3 retries were spent


def test_a_job_whose_store_answers_internal_errors_is_given_back_then_fails_naming_object_storage(
    client: openai.OpenAI, settings: Settings
) -> None:
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    job_id = client.fine_tuning.jobs.create(model=settings.default_base_model, training_file=file_id).id

    with FailingS3(500, "InternalError") as server:
        failing = _against(settings, server)
        run_job(failing, registry_from_settings(failing), job_id)
        given_back = client.fine_tuning.jobs.retrieve(job_id)
        with transaction(settings.require("database_url")) as session:
            session.get_one(FineTuningJob, job_id).attempt = settings.max_job_attempts - 1
        run_job(failing, registry_from_settings(failing), job_id)

    assert given_back.status == "queued"
    given_back_events = [m for m in _events(settings, job_id) if m.startswith("Object storage became unavailable;")]
    assert given_back_events and not any(server.url.split("//")[1] in m for m in given_back_events)
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "failed" and job.error is not None and job.error.code == "service_unavailable"
    assert job.error.message.startswith("Training stopped 3 times because object storage was unavailable")


def test_a_download_while_the_store_answers_internal_errors_is_a_503_to_retry(
    client: openai.OpenAI, settings: Settings, org_key: str
) -> None:
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id

    with FailingS3(500, "InternalError") as server, TestClient(create_app(_against(settings, server))) as api:
        answer = api.get(f"/v1/files/{file_id}/content", headers={"Authorization": f"Bearer {org_key}"})

    assert answer.status_code == 503 and answer.headers["Retry-After"] == "2"
    error = answer.json()["error"]
    assert error["code"] == "service_unavailable" and error["message"].startswith("Object storage is unavailable")


def test_an_object_the_store_says_it_lacks_is_no_outage(
    client: openai.OpenAI, settings: Settings, org_key: str
) -> None:
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id

    with (
        FailingS3(404, "NoSuchKey") as server,
        TestClient(create_app(_against(settings, server)), raise_server_exceptions=False) as api,
    ):
        answer = api.get(f"/v1/files/{file_id}/content", headers={"Authorization": f"Bearer {org_key}"})

    assert answer.status_code == 500 and "Retry-After" not in answer.headers  # our fault, not the store's
    assert answer.json()["error"]["type"] == "server_error"
