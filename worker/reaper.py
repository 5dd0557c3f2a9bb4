"""Repairs what a crash can leave behind: jobs whose worker died, and jobs whose message never reached
the broker. Run every minute by Celery beat; both passes are safe to run at any time and twice."""

from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import select

from app.config import Settings
from app.db import transaction
from app.jobs import state
from app.jobs.tasks import enqueue_training
from app.tables import FineTuningJob

log = structlog.get_logger()
# A job whose message reached the broker is marked queued within the create request, so one still
# validating after this long was never enqueued.
UNQUEUED_GRACE = timedelta(seconds=60)


def reap_expired_leases(settings: Settings) -> list[str]:
    """Handles every running job whose lease ran out; returns the ids of those re-queued."""
    requeued: list[str] = []
    with transaction(settings.require("database_url")) as session:
        expired = session.execute(
            select(FineTuningJob.id, FineTuningJob.attempt).where(
                FineTuningJob.status == state.RUNNING, FineTuningJob.lease_expires_at < datetime.now(UTC)
            )
        ).all()
        for job_id, attempt in expired:
            if attempt < settings.max_job_attempts and state.move(session, job_id, (state.RUNNING,), state.QUEUED):
                state.add_event(session, job_id, f"Worker lost; restarting the job (attempt {attempt + 1})")
                requeued.append(job_id)
            elif state.move(
                session,
                job_id,
                (state.RUNNING,),
                state.FAILED,
                error={
                    "code": "worker_lost",
                    "message": "The training worker stopped responding",
                    "param": None,
                },
            ):
                state.add_event(session, job_id, "Worker lost; no attempts left", level="error")
    for job_id in requeued:
        enqueue_training(settings, job_id)
        log.info("jobs.reaper.requeued", job_id=job_id)
    return requeued


def resend_unqueued(settings: Settings) -> list[str]:
    """Enqueues jobs left in `validating_files` because the broker was down when they were created."""
    url = settings.require("database_url")
    with transaction(url) as session:
        stale = session.scalars(
            select(FineTuningJob.id).where(
                FineTuningJob.status == state.VALIDATING,
                FineTuningJob.created_at < datetime.now(UTC) - UNQUEUED_GRACE,
            )
        ).all()
    for job_id in stale:
        enqueue_training(settings, job_id)
        with transaction(url) as session:
            state.mark_queued(session, job_id)
        log.info("jobs.reaper.resent", job_id=job_id)
    return list(stale)
