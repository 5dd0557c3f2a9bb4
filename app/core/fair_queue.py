"""The fair training queue: which waiting job a training worker runs next, chosen in PostgreSQL when the worker asks,
not by the order of the broker's one FIFO queue.

Order: the organisation served least recently first (its last job claimed longest ago, or never), then the oldest
job of that organisation; a job given back after an outage waits until its `retry_at`. So one organisation's 50
queued jobs do not make another's single job wait behind all 50: that job is the next claimed.

Each queued job has one broker message, but a message is a doorbell: the worker that receives it claims the next
job in this order, which may be another's. N waiting jobs have N messages, so every one is served; a message that
finds nothing waiting (its job was taken by an earlier doorbell, or cancelled) does nothing. Evaluations keep their
own messages and run in the broker's order (`EVALUATIONS.claim`).
"""

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.core.lifecycle import JOBS
from app.core.tables import FineTuningJob, Organization
from app.core.worker_devices import Capabilities, runnable_by


def claim_next_job(session: Session, lease_seconds: float, worker: Capabilities) -> tuple[str, int] | None:
    """Claims the next job in fair order that `worker` can run: (job id, attempt), or None when no such job is
    waiting and due.

    The candidate row is locked with SKIP LOCKED, so concurrent workers each take a different job instead of
    queueing on one; the claim itself is the guarded update every claim is."""
    candidate = (
        select(FineTuningJob.id, FineTuningJob.organization_id)
        .join(Organization, Organization.id == FineTuningJob.organization_id)
        .where(
            FineTuningJob.status.in_(JOBS.waiting),
            or_(FineTuningJob.retry_at.is_(None), FineTuningJob.retry_at <= func.now()),
            runnable_by(worker),
        )
        .order_by(Organization.last_job_claimed_at.asc().nulls_first(), FineTuningJob.seq)
        .limit(1)
        .with_for_update(of=FineTuningJob, skip_locked=True)
    )
    row = session.execute(candidate).first()
    if row is None:
        return None
    job_id, org_id = row
    attempt = JOBS.claim(session, job_id, lease_seconds)
    if attempt is None:
        return None
    # clock_timestamp, not now(): claims made in one transaction (tests) still tell their order apart
    served = update(Organization).where(Organization.id == org_id).values(last_job_claimed_at=func.clock_timestamp())
    session.execute(served)
    return job_id, attempt
