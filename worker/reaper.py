"""Repairs what a crash can leave behind: jobs whose worker died, jobs whose message never reached the
broker, and queued jobs whose message the broker lost. Run every minute by the maintenance worker's beat;
each pass is safe to run at any time and twice."""

from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import select

from app.core import job_state
from app.core.db import transaction
from app.core.lifecycle import Status
from app.core.queue import enqueue_training
from app.core.settings import Settings
from app.core.tables import FineTuningJob
from worker.broker_messages import jobs_with_messages

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
                FineTuningJob.status == Status.RUNNING, FineTuningJob.lease_expires_at < datetime.now(UTC)
            )
        ).all()
        for job_id, attempt in expired:
            if attempt < settings.max_job_attempts and job_state.move(
                session, job_id, (Status.RUNNING,), Status.QUEUED
            ):
                job_state.add_event(session, job_id, f"Worker lost; restarting the job (attempt {attempt + 1})")
                requeued.append(job_id)
            elif job_state.move(
                session,
                job_id,
                (Status.RUNNING,),
                Status.FAILED,
                error={
                    "code": "worker_lost",
                    "message": "The training worker stopped responding",
                    "param": None,
                },
            ):
                job_state.add_event(session, job_id, "Worker lost; no attempts left", level="error")
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
                FineTuningJob.status == Status.VALIDATING_FILES,
                FineTuningJob.created_at < datetime.now(UTC) - UNQUEUED_GRACE,
            )
        ).all()
    for job_id in stale:
        enqueue_training(settings, job_id)
        with transaction(url) as session:
            job_state.mark_queued(session, job_id)
        log.info("jobs.reaper.resent", job_id=job_id)
    return list(stale)


def redispatch_lost(settings: Settings) -> list[str]:
    """Sends again the jobs marked `queued` that have no message in the broker: those whose message was lost
    (Redis restarted without its data, or the queue was purged), and those given back after an outage once
    their `retry_at` has passed. The broker is read first: a job queued meanwhile has its message already.

    A message taken by a worker in the instant between leaving the queue and entering `unacked` can make
    this send a duplicate, which does nothing (the job can be claimed once).
    """
    in_broker = jobs_with_messages(settings.require("redis_url"))
    now = datetime.now(UTC)
    with transaction(settings.require("database_url")) as session:
        queued = session.execute(
            select(FineTuningJob.id, FineTuningJob.retry_at).where(FineTuningJob.status == Status.QUEUED)
        ).all()
    due = {
        job_id: retry_at for job_id, retry_at in queued if job_id not in in_broker and not (retry_at and retry_at > now)
    }
    for job_id in due:
        enqueue_training(settings, job_id)
        log.info("jobs.reaper.redispatched", job_id=job_id)
    if due:
        with transaction(settings.require("database_url")) as session:
            for job_id, retry_at in due.items():
                message = (
                    "Sent to a worker again after the outage"
                    if retry_at
                    else "The job's queue message was lost (broker restarted?); sent again"
                )
                job_state.add_event(session, job_id, message)
    return list(due)
