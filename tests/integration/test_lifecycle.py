"""The lifecycle jobs and evaluations share (app.core.lifecycle), on real rows: a claim takes an attempt and a lost
claim takes none, an attempt that lost the work can no longer write, and the lease is renewed only while the attempt
holds the work."""

import time
from dataclasses import replace
from datetime import UTC, datetime

import openai
import pytest

from app.core.db import transaction
from app.core.lifecycle import EVALUATIONS, JOBS, Status
from app.core.settings import Settings
from tests.helpers.datasets import chat_jsonl
from tests.helpers.evaluations import create_evaluation, evaluation_row
from tests.helpers.tiny_models import TINY_MODEL_ID
from tests.helpers.waiting import eventually
from worker.lease import LeaseKeeper
from worker.progress import JobProgress
from worker.training.trainer import StepReport

LEASE_S = 0.6  # renewed every 0.2 s


@pytest.fixture
def evaluation_id(client: openai.OpenAI, settings: Settings) -> str:
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    return create_evaluation(client, model=settings.default_base_model, file=file_id)["id"]


def _claim(settings: Settings, evaluation_id: str, lease_seconds: float = 60) -> int | None:
    with transaction(settings.require("database_url")) as session:
        return EVALUATIONS.claim(session, evaluation_id, lease_seconds)


def test_a_claim_returns_the_attempt_it_took_and_a_lost_claim_none(
    client: openai.OpenAI, settings: Settings, evaluation_id: str
) -> None:
    assert _claim(settings, evaluation_id) == 1
    assert _claim(settings, evaluation_id) is None  # running already: a duplicate message claims nothing
    with transaction(settings.require("database_url")) as session:
        assert EVALUATIONS.give_back(session, evaluation_id, retry_at=datetime.now(UTC), attempt=1)
    assert _claim(settings, evaluation_id) == 2
    client.post(f"/evaluations/{evaluation_id}/cancel", cast_to=object)
    assert _claim(settings, evaluation_id) is None
    assert evaluation_row(settings, evaluation_id).attempt == 2


def test_an_attempt_that_lost_the_work_can_no_longer_write(settings: Settings, evaluation_id: str) -> None:
    assert _claim(settings, evaluation_id) == 1
    with transaction(settings.require("database_url")) as session:  # as the reaper does when the lease runs out
        assert EVALUATIONS.move(session, evaluation_id, (Status.RUNNING,), Status.QUEUED, attempt=1)
    assert _claim(settings, evaluation_id) == 2

    with transaction(settings.require("database_url")) as session:
        assert not EVALUATIONS.renew_lease(session, evaluation_id, 60, attempt=1)
        assert not EVALUATIONS.move(session, evaluation_id, (Status.RUNNING,), Status.SUCCEEDED, attempt=1)
        assert not EVALUATIONS.holds(session, evaluation_id, attempt=1)
        assert EVALUATIONS.holds(session, evaluation_id, attempt=2)
        assert EVALUATIONS.move(session, evaluation_id, (Status.RUNNING,), Status.SUCCEEDED, attempt=2, report={})
    row = evaluation_row(settings, evaluation_id)
    assert (row.status, row.attempt) == ("succeeded", 2) and row.finished_at is not None


def test_the_lease_is_renewed_while_running_and_no_longer_once_cancelled(
    client: openai.OpenAI, settings: Settings, evaluation_id: str
) -> None:
    attempt = _claim(settings, evaluation_id, LEASE_S)
    assert attempt == 1
    first = evaluation_row(settings, evaluation_id).lease_expires_at
    assert first is not None
    keeper = LeaseKeeper(settings.require("database_url"), EVALUATIONS, evaluation_id, attempt, LEASE_S)
    with keeper:
        renewed = eventually(lambda: (evaluation_row(settings, evaluation_id).lease_expires_at or first) > first)
        assert renewed and keeper.renewing

        client.post(f"/evaluations/{evaluation_id}/cancel", cast_to=object)

        eventually(lambda: not keeper.renewing, timeout=5, what="the lease keeper to stop")
        last = evaluation_row(settings, evaluation_id).lease_expires_at
        time.sleep(0.5)  # a keeper still renewing would have renewed twice by now
        assert evaluation_row(settings, evaluation_id).lease_expires_at == last


def test_jobs_share_the_claim(client: openai.OpenAI, settings: Settings) -> None:
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    job_id = client.fine_tuning.jobs.create(model=settings.default_base_model, training_file=file_id).id
    with transaction(settings.require("database_url")) as session:
        assert JOBS.claim(session, job_id, lease_seconds=60) == 1
    with transaction(settings.require("database_url")) as session:
        assert JOBS.claim(session, job_id, lease_seconds=60) is None
    assert client.fine_tuning.jobs.retrieve(job_id).status == "running"


def test_a_training_attempt_the_reaper_replaced_writes_no_more_steps_and_stops(
    client: openai.OpenAI, settings: Settings
) -> None:
    """The first attempt of a job goes on training after its lease lapsed and another attempt took the job: its
    steps must not write metrics into the new attempt's job, and it must stop."""
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    job_id = client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=file_id).id
    url = settings.require("database_url")
    with transaction(url) as session:
        first = JOBS.claim(session, job_id, 60)
    assert first == 1
    progress = JobProgress(url, job_id, first, lease_seconds=60)
    step = StepReport(step=1, total_steps=10, epoch=1, train_loss=1.0, learning_rate=1e-3, valid_loss=None)
    progress.on_step(step)
    assert not progress.should_stop()

    with transaction(url) as session:  # the reaper re-queues it, and another worker claims it
        assert JOBS.move(session, job_id, (Status.RUNNING,), Status.QUEUED, first, lease_expires_at=None)
        assert JOBS.claim(session, job_id, 60) == 2
    progress.on_step(replace(step, step=2))

    assert progress.should_stop()
    steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job_id) if e.type == "metrics"]
    assert steps == [1]
