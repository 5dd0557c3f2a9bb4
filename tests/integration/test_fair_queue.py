"""The fair training queue: a worker woken by any training message claims the next job in fair order, the
organisation served least recently first and FIFO within one, so one organisation's queue of jobs does not make
another's single job wait behind it. Jobs are made through the API and claimed as a worker claims them; nothing
trains here."""

import uuid
from datetime import UTC, datetime, timedelta

import openai
import pytest
from sqlalchemy import select

from app.core.db import session_factory, transaction
from app.core.fair_queue import claim_next_job
from app.core.settings import Settings
from app.core.tables import FineTuningJob
from app.core.worker_devices import Capabilities, Gpu, Needs, cannot_run
from app.ml.base_models.from_settings import registry_from_settings
from tests.helpers.datasets import chat_jsonl
from tests.helpers.services import new_org_key, sdk_client
from tests.helpers.workers import forget_other_jobs
from worker.next_job import run_next_job

LEASE_S = 60


@pytest.fixture(autouse=True)
def only_our_jobs(settings: Settings) -> None:
    """Other modules' queued jobs would be claimed too: they are cancelled first."""
    forget_other_jobs(settings)


def _org_client(settings: Settings, api_base_url: str, name: str) -> openai.OpenAI:
    return sdk_client(api_base_url, new_org_key(settings, f"{name}-{uuid.uuid4().hex[:8]}"))


def _queue_jobs(settings: Settings, client: openai.OpenAI, count: int) -> list[str]:
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    model = settings.default_base_model
    return [client.fine_tuning.jobs.create(model=model, training_file=file_id).id for _ in range(count)]


def _claim(settings: Settings) -> tuple[str, int] | None:
    with transaction(settings.require("database_url")) as session:
        return claim_next_job(session, LEASE_S, Capabilities())


def _claim_all(settings: Settings) -> list[str]:
    claimed = []
    while (next_job := _claim(settings)) is not None:
        claimed.append(next_job[0])
    return claimed


def test_one_organisation_s_single_job_is_claimed_second_not_behind_another_s_five(
    settings: Settings, api_base_url: str
) -> None:
    busy = _queue_jobs(settings, _org_client(settings, api_base_url, "busy"), 5)
    quiet = _queue_jobs(settings, _org_client(settings, api_base_url, "quiet"), 1)

    claimed = _claim_all(settings)

    assert claimed == [busy[0], quiet[0], *busy[1:]]  # and FIFO within the busy organisation


def test_the_organisation_served_least_recently_goes_first(settings: Settings, api_base_url: str) -> None:
    first = _org_client(settings, api_base_url, "first")
    second = _org_client(settings, api_base_url, "second")
    (early,) = _queue_jobs(settings, first, 1)
    assert _claim(settings) == (early, 1)  # `first` was served just now
    later = _queue_jobs(settings, first, 1) + _queue_jobs(settings, second, 1)

    assert _claim_all(settings) == [later[1], later[0]]


def test_a_job_waiting_for_its_retry_time_is_skipped_until_then(settings: Settings, api_base_url: str) -> None:
    held, ready = _queue_jobs(settings, _org_client(settings, api_base_url, "retry"), 2)
    with transaction(settings.require("database_url")) as session:
        session.get_one(FineTuningJob, held).retry_at = datetime.now(UTC) + timedelta(minutes=5)

    assert _claim_all(settings) == [ready]

    with transaction(settings.require("database_url")) as session:
        session.get_one(FineTuningJob, held).retry_at = datetime.now(UTC) - timedelta(seconds=1)
    assert _claim(settings) == (held, 1)


def test_concurrent_workers_claim_different_jobs(settings: Settings, api_base_url: str) -> None:
    # Two organisations: claims of one organisation's jobs also wait for each other to commit (the organisation's
    # row records when it was served), which one thread holding both sessions could not.
    jobs = _queue_jobs(settings, _org_client(settings, api_base_url, "left"), 1)
    jobs += _queue_jobs(settings, _org_client(settings, api_base_url, "right"), 1)
    sessions = session_factory(settings.require("database_url"))
    with sessions() as one, sessions() as two:
        first = claim_next_job(one, LEASE_S, Capabilities())  # its row stays locked until `one` commits
        second = claim_next_job(two, LEASE_S, Capabilities())  # SKIP LOCKED: the next job, not a wait or the same one
        one.commit()
        two.commit()
    assert first is not None and second is not None
    assert [first[0], second[0]] == jobs


def test_a_message_with_nothing_waiting_does_nothing(settings: Settings, api_base_url: str) -> None:
    (job,) = _queue_jobs(settings, _org_client(settings, api_base_url, "taken"), 1)
    assert _claim(settings) == (job, 1)  # taken by another message's worker

    assert run_next_job(settings, registry_from_settings(settings), doorbell=job, worker=Capabilities()) is None
    with transaction(settings.require("database_url")) as session:
        assert session.get_one(FineTuningJob, job).attempt == 1


WORKERS = {
    "cpu": Capabilities(),
    "h200": Capabilities([Gpu("H200", 141 * 2**30)], quantization=True),
    "small-gpu": Capabilities([Gpu("small", 8 * 2**30)], quantization=True),
    "gpu-without-4bit": Capabilities([Gpu("no-bnb", 80 * 2**30)]),
    "only-other-model": Capabilities(base_models=["other-model"]),
}
NEEDS = [(False, None), (False, 7 * 2**30), (False, 60 * 2**30), (True, 2**30), (True, 60 * 2**30)]


@pytest.mark.parametrize("worker", list(WORKERS))
def test_a_worker_claims_exactly_the_jobs_it_can_run(settings: Settings, api_base_url: str, worker: str) -> None:
    """The claim's SQL condition and the rule the API and the reaper tell users by (`cannot_run`) agree."""
    jobs = _queue_jobs(settings, _org_client(settings, api_base_url, "needs"), len(NEEDS))
    with transaction(settings.require("database_url")) as session:
        for job_id, (cuda, memory) in zip(jobs, NEEDS, strict=True):
            row = session.get_one(FineTuningJob, job_id)
            row.needs_cuda, row.gpu_memory_bytes = cuda, memory
        runnable = {
            row.id
            for row in session.scalars(select(FineTuningJob).where(FineTuningJob.id.in_(jobs)))
            if cannot_run(WORKERS[worker], Needs.of(row)) is None
        }
    with session_factory(settings.require("database_url"))() as session, session.begin():
        claimed = []
        while (next_job := claim_next_job(session, LEASE_S, WORKERS[worker])) is not None:
            claimed.append(next_job[0])
        session.rollback()

    assert set(claimed) == runnable
    assert runnable != set(jobs) or worker == "h200"  # every worker but the largest leaves some job to others
