"""A real training worker shares itself fairly: with one organisation's three jobs queued before another's one, the
worker starts the other organisation's job second, not last, each message waking it for the next job in fair
order rather than its own."""

import uuid

import openai
from sqlalchemy import select

from app.core.db import transaction
from app.core.settings import Settings
from app.core.tables import JobEvent
from tests.helpers.datasets import chat_jsonl
from tests.helpers.jobs import NO_EVALUATION, wait_for_job
from tests.helpers.services import new_org_key, sdk_client
from tests.helpers.tiny_models import TINY_MODEL_ID
from tests.helpers.workers import forget_other_jobs, start_training_worker, stop


def _queue_tiny_jobs(client: openai.OpenAI, count: int) -> list[str]:
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    return [
        client.fine_tuning.jobs.create(
            model=TINY_MODEL_ID, training_file=file_id, hyperparameters={"n_epochs": 1}, extra_body=NO_EVALUATION
        ).id
        for _ in range(count)
    ]


def _start_order(settings: Settings, job_ids: list[str]) -> list[str]:
    started = select(JobEvent.job_id).where(JobEvent.job_id.in_(job_ids), JobEvent.message == "Fine-tuning job started")
    with transaction(settings.require("database_url")) as session:
        return list(session.scalars(started.order_by(JobEvent.seq)))


def test_a_worker_runs_a_quiet_organisation_s_job_before_a_busy_one_s_backlog(
    settings: Settings, api_base_url: str
) -> None:
    forget_other_jobs(settings)
    busy = sdk_client(api_base_url, new_org_key(settings, f"busy-{uuid.uuid4().hex[:8]}"))
    quiet = sdk_client(api_base_url, new_org_key(settings, f"quiet-{uuid.uuid4().hex[:8]}"))
    backlog = _queue_tiny_jobs(busy, 3)
    (single,) = _queue_tiny_jobs(quiet, 1)  # its message is the last in the broker's queue

    worker = start_training_worker(settings)
    try:
        ended = [wait_for_job(client, job_id) for client, job_id in [(busy, j) for j in backlog] + [(quiet, single)]]
    finally:
        stop(worker)

    assert [job.status for job in ended] == ["succeeded"] * 4
    assert _start_order(settings, [*backlog, single]) == [backlog[0], single, *backlog[1:]]
