"""Audit #7: a model's epoch checkpoints (`ft:…:ckpt-step-N`) are served only while the model is, and leave
storage with it; checkpoints of jobs that did not succeed are never served and are swept."""

import openai
import pytest
from sqlalchemy import delete, select

from app.core.db import transaction
from app.core.settings import Settings
from app.core.storage import checkpoint_prefix, checkpoints_prefix, store_for
from app.core.tables import FineTunedModel, FineTuningJob, JobCheckpoint
from tests.helpers.jobs import finished_job_with_model
from worker.storage_sweep import leftovers_of_ended_jobs


def _with_checkpoint(settings: Settings, job_id: str, model_id: str, step: int = 3) -> tuple[str, str]:
    """(checkpoint model id, organisation id): a checkpoint row of the job and an object under its prefix, as the
    worker leaves them at an epoch's end."""
    with transaction(settings.require("database_url")) as session:
        organization_id = session.get_one(FineTuningJob, job_id).organization_id
        prefix = checkpoint_prefix(organization_id, job_id, step)
        session.add(
            JobCheckpoint(
                id=f"ftckpt-{job_id}-{step}", job_id=job_id, step_number=step, metrics={},
                fine_tuned_model_checkpoint=f"{model_id}:ckpt-step-{step}", storage_prefix=prefix,
            )
        )  # fmt: skip
    store_for(settings).put_bytes(f"{prefix}/adapter_config.json", b"{}")
    return f"{model_id}:ckpt-step-{step}", organization_id


def _objects(settings: Settings, organization_id: str, job_id: str) -> list[str]:
    return list(store_for(settings).list_keys(checkpoints_prefix(organization_id, job_id) + "/"))


def _set_status(settings: Settings, job_id: str, status: str, without_model: bool = False) -> None:
    with transaction(settings.require("database_url")) as session:
        session.get_one(FineTuningJob, job_id).status = status
        if without_model:  # as a job that failed has none
            session.execute(delete(FineTunedModel).where(FineTunedModel.job_id == job_id))


def test_deleting_a_model_stops_serving_its_checkpoints_and_removes_them(
    settings: Settings, client: openai.OpenAI
) -> None:
    job_id, model_id, _ = finished_job_with_model(settings, client)
    checkpoint, organization_id = _with_checkpoint(settings, job_id, model_id)
    assert client.models.retrieve(checkpoint).id == checkpoint
    assert _objects(settings, organization_id, job_id)

    client.models.delete(model_id)

    with pytest.raises(openai.NotFoundError) as retrieved:
        client.models.retrieve(checkpoint)
    with pytest.raises(openai.NotFoundError) as chatted:
        client.chat.completions.create(model=checkpoint, messages=[{"role": "user", "content": "hi"}])
    assert retrieved.value.code == chatted.value.code == "model_not_found"
    assert _objects(settings, organization_id, job_id) == []


@pytest.mark.parametrize("status", ["failed", "cancelled", "running"])
def test_checkpoints_of_jobs_that_did_not_succeed_are_not_served(
    settings: Settings, client: openai.OpenAI, status: str
) -> None:
    job_id, model_id, _ = finished_job_with_model(settings, client)
    checkpoint, _ = _with_checkpoint(settings, job_id, model_id)
    _set_status(settings, job_id, status)
    try:
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(checkpoint)
    finally:  # a live model whose job failed is a state only this test makes: the sweep would take its adapter
        _set_status(settings, job_id, "succeeded")


def test_the_sweep_removes_checkpoints_of_failed_jobs_and_deleted_models_only(
    settings: Settings, client: openai.OpenAI
) -> None:
    live_job, live_model, _ = finished_job_with_model(settings, client)
    failed_job, failed_model, _ = finished_job_with_model(settings, client)
    deleted_job, deleted_model, _ = finished_job_with_model(settings, client)
    _, organization_id = _with_checkpoint(settings, live_job, live_model)
    _with_checkpoint(settings, failed_job, failed_model)
    _set_status(settings, failed_job, "failed", without_model=True)
    client.models.delete(deleted_model)
    _with_checkpoint(settings, deleted_job, deleted_model)  # as if storage was down when the model was deleted

    with transaction(settings.require("database_url")) as session:
        swept = leftovers_of_ended_jobs(session, store_for(settings))

    assert {checkpoints_prefix(organization_id, job) for job in (failed_job, deleted_job)} <= set(swept)
    assert _objects(settings, organization_id, failed_job) == _objects(settings, organization_id, deleted_job) == []
    assert _objects(settings, organization_id, live_job)
    with transaction(settings.require("database_url")) as session:  # the rows stay: the job's history
        assert session.scalar(select(JobCheckpoint.id).where(JobCheckpoint.job_id == deleted_job)) is not None
