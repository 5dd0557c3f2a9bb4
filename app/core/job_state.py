"""What only jobs have: their events (progress, metrics, warnings). Their state changes are `JOBS` in
`app.core.lifecycle`, shared with evaluations."""

from collections.abc import Collection
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.core import ids
from app.core.lifecycle import JOBS, Status
from app.core.tables import JobEvent
from app.core.worker_devices import Needs, waiting_message

WAITING_FOR_WORKER = "waiting_for_worker"  # the code of the event that says no live worker can run the job


def mark_queued(session: Session, job_id: str) -> None:
    """validating_files → queued, once the job's message is with the broker (jobs an older version left there)."""
    if JOBS.move(session, job_id, (Status.VALIDATING_FILES,), Status.QUEUED):
        add_event(session, job_id, "Files validated; job queued for a training worker")


def tell_waiting(session: Session, job_id: str, why: str, needs: Needs, timeout_seconds: float) -> None:
    """The warning that no live training worker can run the job (`why`): what it waits for, and how long."""
    message = waiting_message(why, needs, timeout_seconds)
    add_event(session, job_id, message, level="warn", data={"code": WAITING_FOR_WORKER})


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


def add_metrics_event(session: Session, job_id: str, message: str, data: dict[str, Any], limit: int) -> None:
    """A step's metrics event; past `limit` of them, every other older one goes (one per step of a week-long job
    would grow without bound, and the dashboard loads them all). The first, the newest and those with validation
    metrics stay, so the curve keeps its shape at half the resolution each time it fills up."""
    add_event(session, job_id, message, type_="metrics", data=data)
    session.flush()
    count = session.scalar(select(func.count()).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")) or 0
    if count > limit:
        _thin_metrics(session, job_id)


def _thin_metrics(session: Session, job_id: str) -> None:
    query = select(JobEvent.id, JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
    rows = list(session.execute(query.order_by(JobEvent.seq)))
    thinnable = [event_id for event_id, data in rows[1:-1] if (data or {}).get("valid_loss") is None]
    session.execute(delete(JobEvent).where(JobEvent.id.in_(thinnable[::2])))


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
