"""An attempt of a job the reaper gave to another attempt (its lease lapsed: a stall, a network split) writes
nothing more and deletes nothing: not the model the other attempt published, nor its checkpoints or events."""

from typing import Any

import openai
import pytest
from sqlalchemy import func, select

from app.core.db import transaction
from app.core.lifecycle import JOBS, Status
from app.core.queue import producer
from app.core.settings import Settings
from app.core.storage import adapter_prefix, store_for
from app.core.tables import FineTunedModel, FineTuningJob, JobCheckpoint, JobEvent
from app.ml.base_models.from_settings import registry_from_settings
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.jobs import NO_EVALUATION
from tests.helpers.tiny_models import TINY_MODEL_ID
from worker import fine_tune, job_runner
from worker.checkpoints import EpochCheckpoints
from worker.job_runner import run_job


def _job(client: openai.OpenAI, settings: Settings) -> str:
    training = client.files.create(file=("tickets.jsonl", chat_jsonl(TICKETS)), purpose="fine-tune")
    job_id = client.fine_tuning.jobs.create(
        model=TINY_MODEL_ID,
        training_file=training.id,
        hyperparameters={"n_epochs": 1, "batch_size": 2},
        extra_body=NO_EVALUATION,
    ).id
    producer(settings).control.purge()  # its message was taken, as by the worker that runs it
    return job_id


def _requeue(settings: Settings, job_id: str, attempt: int) -> None:
    """What the reaper does once the lease of `attempt` has lapsed."""
    with transaction(settings.require("database_url")) as session:
        assert JOBS.move(session, job_id, (Status.RUNNING,), Status.QUEUED, attempt, lease_expires_at=None)


def _rows(settings: Settings, job_id: str) -> tuple[int, int]:
    """(checkpoint rows, event rows) of the job."""
    with transaction(settings.require("database_url")) as session:
        checkpoints = session.scalar(select(func.count()).where(JobCheckpoint.job_id == job_id)) or 0
        events = session.scalar(select(func.count()).where(JobEvent.job_id == job_id)) or 0
    return checkpoints, events


def test_an_attempt_whose_job_another_attempt_published_deletes_nothing_and_the_model_still_serves(
    client: openai.OpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _job(client, settings)
    registry = registry_from_settings(settings)
    report_on_fine_tune = fine_tune.report_on_fine_tune
    taken_over = []

    def stalled_then_taken_over(*args: Any, **kwargs: Any) -> Any:
        """Attempt 1 has trained and stalls in its end-of-job report: its lease lapses, the reaper re-queues the
        job, and attempt 2 runs it to the end and publishes the model, before attempt 1 goes on to upload."""
        if not taken_over:
            taken_over.append(True)
            _requeue(settings, job_id, attempt=1)
            run_job(settings, registry, job_id)
            assert client.fine_tuning.jobs.retrieve(job_id).status == "succeeded"
        return report_on_fine_tune(*args, **kwargs)

    monkeypatch.setattr(fine_tune, "report_on_fine_tune", stalled_then_taken_over)
    run_job(settings, registry, job_id)  # attempt 1, then (inside) attempt 2

    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "succeeded" and job.fine_tuned_model
    with transaction(settings.require("database_url")) as session:
        row = session.get_one(FineTuningJob, job_id)
        assert row.attempt == 2
        models = session.scalars(select(FineTunedModel.adapter_prefix).where(FineTunedModel.job_id == job_id)).all()
    prefix = adapter_prefix(row.organization_id, job_id)
    assert models == [prefix]
    keys = list(store_for(settings).list_keys(prefix + "/"))
    assert any(key.endswith(".safetensors") for key in keys), keys  # the published adapter is still there
    messages = [event.message for event in client.fine_tuning.jobs.list_events(job_id, limit=100)]
    assert messages.count("The job has successfully completed") == 1

    # Attempt 1 fails late (an error, an outage) and reports its last checkpoint: still nothing changes.
    checkpoints_before, events_before = _rows(settings, job_id)
    error = {"code": "training_error", "message": "late failure of a stale attempt", "param": None}
    job_runner._fail(settings, job_id, error, attempt=1)
    job_runner._give_back_or_fail(settings, job_id, "object storage", attempt=1)
    with transaction(settings.require("database_url")) as session:
        stale = session.get_one(FineTuningJob, job_id)
        session.expunge(stale)
    stale.attempt = 1
    checkpoints = EpochCheckpoints(settings.require("database_url"), store_for(settings), stale, "ft:stale")
    checkpoints.on_epoch_end(object())  # type: ignore[arg-type]  # never read: the attempt no longer holds the job
    job_runner._train_and_publish(settings, registry, job_id, attempt=1)

    assert _rows(settings, job_id) == (checkpoints_before, events_before)
    assert client.fine_tuning.jobs.retrieve(job_id).status == "succeeded"
    assert list(store_for(settings).list_keys(prefix + "/")) == keys
    reply = client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": f"Ticket: {TICKETS[0][0]}"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None


def test_a_job_training_a_model_further_resumes_after_that_model_was_deleted(
    client: openai.OpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = registry_from_settings(settings)
    parent_job = _job(client, settings)
    run_job(settings, registry, parent_job)
    parent = client.fine_tuning.jobs.retrieve(parent_job).fine_tuned_model
    assert parent
    training = client.files.create(file=("tickets.jsonl", chat_jsonl(TICKETS)), purpose="fine-tune")
    child_job = client.fine_tuning.jobs.create(
        model=parent,
        training_file=training.id,
        hyperparameters={"n_epochs": 2, "batch_size": 2},
        extra_body=NO_EVALUATION,
    ).id
    producer(settings).control.purge()

    class LostAfterFirstCheckpoint(EpochCheckpoints):
        """Attempt 1's worker is lost once its first checkpoint is saved (the reaper re-queues the job)."""

        def on_epoch_end(self, report: Any) -> None:
            super().on_epoch_end(report)
            if self.attempt == 1:
                _requeue(settings, child_job, attempt=1)
                raise ConnectionResetError("worker lost")

    monkeypatch.setattr(job_runner, "EpochCheckpoints", LostAfterFirstCheckpoint)
    with pytest.raises(ConnectionResetError):
        run_job(settings, registry, child_job)
    client.models.delete(parent)

    run_job(settings, registry, child_job)

    finished = client.fine_tuning.jobs.retrieve(child_job)
    assert finished.status == "succeeded", finished.error
    messages = [event.message for event in client.fine_tuning.jobs.list_events(child_job, limit=100)]
    assert any(message.startswith("Resumed from step") for message in messages)
