"""Every request needs a live key, and no organisation can see or use another's objects."""

import httpx
import openai
import pytest
from sqlalchemy import select

from app.config import Settings
from app.db import transaction
from app.orgs.keys import revoke_key
from app.tables import ApiKey, FineTunedModel, FineTuningJob, Organization
from tests.conftest import sdk_client
from tests.datasets import chat_jsonl


@pytest.mark.parametrize("header", [None, "Bearer lp_not-a-real-key", "Basic abc"])
def test_missing_or_bad_key_is_401_in_openai_error_shape(api_base_url: str, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx.get(f"{api_base_url}/v1/files", headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "authentication_error" and error["message"]


def test_revoked_key_stops_working(api_base_url: str, settings: Settings, org_key: str) -> None:
    client = sdk_client(api_base_url, org_key)
    client.files.list()
    with transaction(settings.require("database_url")) as session:
        key = session.scalars(select(ApiKey).where(ApiKey.prefix == org_key[:12])).one()
        assert key.last_used_at is not None
        revoke_key(session, key.id)
    with pytest.raises(openai.AuthenticationError):
        client.files.list()


def test_keys_are_stored_hashed(settings: Settings, org_key: str) -> None:
    with transaction(settings.require("database_url")) as session:
        stored = session.scalars(select(ApiKey.key_hash)).all()
    assert org_key not in stored and all(len(value) == 64 for value in stored)


def _fake_succeeded_job(settings: Settings, client: openai.OpenAI, file_id: str) -> tuple[str, str]:
    """A finished job and its model row, written directly: isolation needs the rows, not a training run."""
    job = client.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=file_id)
    model_id = f"ft:smollm2-135m-instruct:owner::{job.id}"
    with transaction(settings.require("database_url")) as session:
        row = session.get_one(FineTuningJob, job.id)
        row.status, row.fine_tuned_model = "succeeded", model_id
        session.add(
            FineTunedModel(
                id=model_id,
                organization_id=row.organization_id,
                job_id=job.id,
                base_model="smollm2-135m-instruct",
                adapter_prefix=f"orgs/{row.organization_id}/adapters/{job.id}",
            )
        )
    return job.id, model_id


def test_another_organisation_gets_404_for_every_object(
    client: openai.OpenAI, other_client: openai.OpenAI, settings: Settings
) -> None:
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    job_id, model_id = _fake_succeeded_job(settings, client, file_id)
    evaluation = client.post("/evaluations", body={"model": model_id, "file": file_id}, cast_to=object)
    theirs = other_client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id

    assert [f.id for f in other_client.files.list()] == [theirs]
    assert other_client.get("/evaluations", cast_to=object)["data"] == []  # type: ignore[index]
    assert other_client.fine_tuning.jobs.list().data == []
    assert model_id not in [m.id for m in other_client.models.list()]
    attempts = [
        lambda: other_client.files.retrieve(file_id),
        lambda: other_client.files.content(file_id),
        lambda: other_client.files.delete(file_id),
        lambda: other_client.fine_tuning.jobs.retrieve(job_id),
        lambda: other_client.fine_tuning.jobs.cancel(job_id),
        lambda: other_client.fine_tuning.jobs.list_events(job_id),
        lambda: other_client.fine_tuning.jobs.checkpoints.list(job_id),
        lambda: other_client.get(f"/fine_tuning/jobs/{job_id}/evaluation", cast_to=object),
        lambda: other_client.get(f"/evaluations/{evaluation['id']}", cast_to=object),  # type: ignore[index]
        lambda: other_client.post("/evaluations", body={"model": model_id, "file": theirs}, cast_to=object),
        lambda: other_client.models.retrieve(model_id),
        lambda: other_client.models.delete(model_id),
        lambda: other_client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}]),
        lambda: other_client.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=file_id),
    ]
    for attempt in attempts:
        with pytest.raises(openai.NotFoundError):
            attempt()
    # and the owner still has everything
    assert client.files.retrieve(file_id).id == file_id
    assert client.models.retrieve(model_id).id == model_id
    with transaction(settings.require("database_url")) as session:
        assert session.scalars(select(Organization)).all()
