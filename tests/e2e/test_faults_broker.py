"""Redis restarted without its data while one job trains and another waits in its queue: a Redis server of the
test's own (so the suite's stays up), a real training worker and a real maintenance worker (the reaper on a 2 s
beat). Every job still ends, each trained once: one model, one start, no step run twice."""

from pathlib import Path

import openai
from sqlalchemy import func, select

from app.api.main import create_app
from app.core.db import transaction
from app.core.settings import Settings
from app.core.tables import FineTunedModel, JobEvent
from tests.helpers.jobs import start_long_tiny_job
from tests.helpers.own_services import OwnRedis
from tests.helpers.services import new_org_key, sdk_client, serving
from tests.helpers.waiting import eventually
from tests.helpers.workers import forget_other_jobs, start_maintenance_worker, start_training_worker, stop

JOB_TIMEOUT_S = 600


def _wait(client: openai.OpenAI, job_id: str, statuses: set[str]) -> str:
    return eventually(
        lambda: (status := client.fine_tuning.jobs.retrieve(job_id).status) in statuses and status,
        timeout=JOB_TIMEOUT_S,
        interval=0.5,
        what=f"{job_id} to be {' or '.join(sorted(statuses))}",
    )


def test_a_redis_restart_loses_queued_messages_and_every_job_still_ends_once(
    settings: Settings, own_redis: OwnRedis, tmp_path: Path
) -> None:
    own = settings.model_copy(update={"redis_url": own_redis.url})
    forget_other_jobs(own)  # the fair queue would take other modules' older queued jobs first
    worker = start_training_worker(own)
    maintenance = start_maintenance_worker(own, tmp_path / "beat", LORAPORT_RECONCILE_INTERVAL_SECONDS="2")
    try:
        with serving(create_app(own)) as url:
            client = sdk_client(url, new_org_key(own, "broker-faults"))
            # the tiny model, long enough (a few seconds) that the first job still trains when Redis restarts
            jobs = [start_long_tiny_job(client, n_epochs=4) for _ in range(2)]
            _wait(client, jobs[0], {"running"})  # the solo worker trains one; the other's message waits in Redis

            own_redis.restart_empty()
            finals = [_wait(client, job, {"succeeded", "failed", "cancelled"}) for job in jobs]
    finally:
        stop(maintenance)
        stop(worker)

    assert finals == ["succeeded", "succeeded"]
    with transaction(own.require("database_url")) as session:
        for job in jobs:
            models = session.scalar(
                select(func.count()).select_from(FineTunedModel).where(FineTunedModel.job_id == job)
            )
            starts = session.scalar(
                select(func.count()).where(JobEvent.job_id == job, JobEvent.message == "Fine-tuning job started")
            )
            steps = list(
                session.scalars(
                    select(JobEvent.data["step"].as_integer()).where(JobEvent.job_id == job, JobEvent.type == "metrics")
                )
            )
            assert (models, starts) == (1, 1), job
            assert len(steps) == len(set(steps)), f"{job} ran a step twice"
        resent = select(JobEvent.message).where(JobEvent.job_id == jobs[1], JobEvent.message.like("%sent again%"))
        assert session.scalars(resent).all(), "the waiting job's message was not lost, so not re-sent"
