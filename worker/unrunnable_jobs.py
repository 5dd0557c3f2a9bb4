"""Queued jobs that no live training worker can run (QLoRA with no CUDA worker, a base model no worker loads): their
owner is told what each waits for, and told again when a worker that can run it is live; one that has waited
`settings.unrunnable_job_timeout_seconds` since it was told fails with `no_capable_worker`, instead of waiting for
ever or being failed by a worker that took it. Run by the maintenance worker's beat with the reaper."""

from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import job_state
from app.core.db import transaction
from app.core.lifecycle import JOBS, Status
from app.core.settings import Settings
from app.core.tables import FineTuningJob, JobEvent
from app.core.worker_devices import Capabilities, Needs, reported, why_none_can_run

log = structlog.get_logger()
WORKER_AVAILABLE = "worker_available"
AVAILABLE = "A training worker that can run this job is live"
NO_CAPABLE_WORKER = "no_capable_worker"
_CODES = (job_state.WAITING_FOR_WORKER, WORKER_AVAILABLE)


def tell_unrunnable_jobs(settings: Settings) -> list[str]:
    """Tells, and past the timeout fails, the queued jobs no live worker can run; the ids of those failed."""
    workers = reported(settings.require("redis_url"))
    timeout = settings.unrunnable_job_timeout_seconds
    failed = []
    with transaction(settings.require("database_url")) as session:
        queued = session.scalars(select(FineTuningJob).where(FineTuningJob.status.in_(JOBS.waiting))).all()
        told = _last_told(session, [job.id for job in queued])
        for job in queued:
            if _tell_or_fail(session, job, told.get(job.id), workers, timeout):
                failed.append(job.id)
    return failed


def _tell_or_fail(
    session: Session, job: FineTuningJob, told: JobEvent | None, workers: dict[str, Capabilities], timeout: float
) -> bool:
    """True when the job failed here; `told`: its last event that said whether a worker can run it."""
    needs = Needs.of(job)
    why = why_none_can_run(needs, workers)
    if told is None or (told.data or {}).get("code") != job_state.WAITING_FOR_WORKER:
        if why is not None:
            job_state.tell_waiting(session, job.id, why, needs, timeout)
        return False
    if why is None:
        job_state.add_event(session, job.id, AVAILABLE, data={"code": WORKER_AVAILABLE})
        return False
    if told.created_at > datetime.now(UTC) - timedelta(seconds=timeout):
        return False
    message = f"No live training worker could run this job for {timeout / 3600:g} h ({why})"
    error = {"code": NO_CAPABLE_WORKER, "message": message, "param": None}
    if not JOBS.move(session, job.id, JOBS.waiting, Status.FAILED, error=error):
        return False
    job_state.add_event(session, job.id, message, level="error")
    log.warning("jobs.no_capable_worker", job_id=job.id)
    return True


def _last_told(session: Session, job_ids: list[str]) -> dict[str, JobEvent]:
    """Each job's last event that said whether a worker can run it, for the jobs that have one: one query for all."""
    query = (
        select(JobEvent)
        .where(JobEvent.job_id.in_(job_ids), JobEvent.data["code"].as_string().in_(_CODES))
        .order_by(JobEvent.job_id, JobEvent.seq.desc())
        .distinct(JobEvent.job_id)
    )
    return {event.job_id: event for event in session.scalars(query)}
