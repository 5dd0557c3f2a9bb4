"""A job only moves forward: every transition is one guarded UPDATE, so a duplicate or late
message (Celery on Redis can deliver a long task twice) cannot run or finish a job twice."""

from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core import ids
from app.core.lifecycle import FINISHED, Status
from app.core.tables import FineTuningJob, JobEvent


def move(session: Session, job_id: str, from_: tuple[str, ...], to: str, **values: Any) -> bool:
    """Sets the status to `to` if it is now one of `from_`; False when another actor got there first."""
    if to in FINISHED:
        values.setdefault("finished_at", datetime.now(UTC))
    result = session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job_id, FineTuningJob.status.in_(from_))
        .values(status=to, **values)
    )
    return result.rowcount == 1


def claim(session: Session, job_id: str, lease_seconds: int) -> bool:
    """→ running, taking a lease that the trainer renews while it works.

    A job may still be `validating_files` when its message arrives: the API marks it queued only after
    the broker took the message, and a worker can be quicker than that.
    """
    return move(
        session,
        job_id,
        (Status.VALIDATING_FILES, Status.QUEUED),
        Status.RUNNING,
        attempt=FineTuningJob.attempt + 1,
        lease_expires_at=datetime.now(UTC) + timedelta(seconds=lease_seconds),
        retry_at=None,
    )


def give_back(session: Session, job_id: str, retry_at: datetime) -> bool:
    """running → queued, to be sent to a worker again once `retry_at` has passed (the reaper does)."""
    return move(session, job_id, (Status.RUNNING,), Status.QUEUED, retry_at=retry_at, lease_expires_at=None)


def mark_queued(session: Session, job_id: str) -> None:
    """validating_files → queued, once the job's message is with the broker."""
    if move(session, job_id, (Status.VALIDATING_FILES,), Status.QUEUED):
        add_event(session, job_id, "Files validated; job queued for a training worker")


def renew_lease(session: Session, job_id: str, lease_seconds: int, estimated_finish: datetime | None = None) -> bool:
    """Extends the lease (and updates the finish estimate); False when the job is no longer running."""
    values: dict[str, Any] = {"lease_expires_at": datetime.now(UTC) + timedelta(seconds=lease_seconds)}
    if estimated_finish is not None:
        values["estimated_finish"] = estimated_finish
    result = session.execute(
        update(FineTuningJob).where(FineTuningJob.id == job_id, FineTuningJob.status == Status.RUNNING).values(**values)
    )
    return result.rowcount == 1


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type_: str = "message",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(JobEvent(id=ids.event_id(), job_id=job_id, level=level, type=type_, message=message, data=data))


def metrics(session: Session, job_id: str) -> list[dict[str, Any]]:
    """The data of the job's metrics events (step, losses, accuracies), oldest first."""
    query = select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics").order_by(JobEvent.seq)
    return list(session.scalars(query))


def latest_metrics(session: Session, job_ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """Each job's last metrics event data (its progress), for the jobs that have one."""
    query = (
        select(JobEvent.job_id, JobEvent.data)
        .where(JobEvent.job_id.in_(job_ids), JobEvent.type == "metrics")
        .order_by(JobEvent.job_id, JobEvent.seq.desc())
        .distinct(JobEvent.job_id)
    )
    return {job_id: data for job_id, data in session.execute(query)}
