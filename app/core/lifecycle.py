"""The lifecycle of background work, fine-tuning jobs and evaluations alike: one set of statuses, and the guarded
state changes that move a row through them.

A row only moves forward: every change is one guarded UPDATE, so a duplicate or late message (Celery on Redis can
deliver a long task twice) cannot run or finish it twice. A claim takes an attempt number, and the writes of that
attempt are fenced on it: an attempt the reaper gave up on cannot undo the work of the one that holds the row now.
Leases are reckoned by the database's clock, the one every worker and the reaper share.
"""

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Row, func, select, update
from sqlalchemy.orm import Session

from app.core import webhook_outbox
from app.core.tables import Evaluation, FineTuningJob


class Status(StrEnum):
    VALIDATING_FILES = "validating_files"  # jobs only, left by versions that queued after the broker took the message
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (Status.VALIDATING_FILES, Status.QUEUED, Status.RUNNING)
FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

Work = type[FineTuningJob] | type[Evaluation]


class Lifecycle:
    """The state changes of one table of background work, whose rows have `status`, `attempt`, `lease_expires_at`,
    `retry_at` and `finished_at`. `waiting` are the statuses of rows that wait for a worker to claim them; `events`
    the webhook event type of each finished status."""

    def __init__(self, table: Work, events: dict[Status, str], waiting: tuple[Status, ...] = (Status.QUEUED,)) -> None:
        self.table = table
        self.events = events
        self.waiting = waiting

    def move(
        self, session: Session, row_id: str, from_: tuple[str, ...], to: str, attempt: int | None = None, **values: Any
    ) -> bool:
        """Sets the status to `to` if it is now one of `from_` (and the attempt still `attempt`, when given); False
        when another actor got there first."""
        statement = update(self.table).where(*self._guard(row_id, from_, attempt))
        if to not in FINISHED:
            return _changed(session.execute(statement.values(status=to, **values)))
        values.setdefault("finished_at", datetime.now(UTC))
        finished = statement.values(status=to, **values).returning(self.table.organization_id)
        organization_id = session.execute(finished).scalar_one_or_none()
        if organization_id is None:
            return False
        # In this transaction: the finish and its webhook deliveries are stored together, or neither is.
        webhook_outbox.record(session, organization_id, self.events[Status(to)], row_id)
        return True

    def claim(self, session: Session, row_id: str, lease_seconds: float) -> int | None:
        """Waiting → running, with a lease the worker renews while it works: the attempt number taken, or None when
        the row is not waiting (another worker claimed it, or it was cancelled or finished)."""
        statement = (
            update(self.table)
            .where(self.table.id == row_id, self.table.status.in_(self.waiting))
            .values(
                status=Status.RUNNING,
                attempt=self.table.attempt + 1,
                lease_expires_at=_lease(lease_seconds),
                retry_at=None,
            )
            .returning(self.table.attempt)
        )
        attempt: int | None = session.execute(statement).scalar_one_or_none()
        return attempt

    def renew_lease(
        self, session: Session, row_id: str, lease_seconds: float, attempt: int | None = None, **values: Any
    ) -> bool:
        """Extends the lease of a running row (of that attempt, when given), setting `values` with it; False when it
        is no longer running, or no longer this attempt's."""
        statement = (
            update(self.table)
            .where(*self._guard(row_id, (Status.RUNNING,), attempt))
            .values(lease_expires_at=_lease(lease_seconds), **values)
        )
        return _changed(session.execute(statement))

    def give_back(self, session: Session, row_id: str, retry_at: datetime, attempt: int | None = None) -> bool:
        """Running → queued, to be sent to a worker again once `retry_at` has passed (the reaper does)."""
        return self.move(
            session, row_id, (Status.RUNNING,), Status.QUEUED, attempt, retry_at=retry_at, lease_expires_at=None
        )

    def holds(self, session: Session, row_id: str, attempt: int) -> bool:
        """Whether `attempt` still runs the row: False once it is cancelled, or re-queued for another attempt."""
        status = session.scalar(select(self.table.status).where(*self._guard(row_id, (Status.RUNNING,), attempt)))
        return status is not None

    def expired(self, session: Session) -> list[tuple[str, int]]:
        """(id, attempt) of the running rows whose lease has run out: their worker died, or cannot reach us."""
        query = select(self.table.id, self.table.attempt).where(
            self.table.status == Status.RUNNING, self.table.lease_expires_at < func.now()
        )
        return list(session.execute(query).tuples())

    def waiting_rows(self, session: Session) -> list[Row[tuple[str, str, datetime | None]]]:
        """(id, status, retry_at) of the rows waiting for a worker."""
        query = select(self.table.id, self.table.status, self.table.retry_at).where(self.table.status.in_(self.waiting))
        return list(session.execute(query))

    def _guard(self, row_id: str, statuses: tuple[str, ...], attempt: int | None) -> list[ColumnElement[bool]]:
        guard = [self.table.id == row_id, self.table.status.in_(statuses)]
        if attempt is not None:
            guard.append(self.table.attempt == attempt)
        return guard


def _lease(seconds: float) -> ColumnElement[datetime]:
    return func.now() + timedelta(seconds=seconds)


def _changed(result: Any) -> bool:
    return bool(result.rowcount == 1)


# A job created by an older version may still be `validating_files`; a worker may claim it from there.
JOBS = Lifecycle(
    FineTuningJob,
    {
        Status.SUCCEEDED: webhook_outbox.JOB_SUCCEEDED,
        Status.FAILED: webhook_outbox.JOB_FAILED,
        Status.CANCELLED: webhook_outbox.JOB_CANCELLED,
    },
    waiting=(Status.VALIDATING_FILES, Status.QUEUED),
)
EVALUATIONS = Lifecycle(
    Evaluation,
    {
        Status.SUCCEEDED: webhook_outbox.EVAL_SUCCEEDED,
        Status.FAILED: webhook_outbox.EVAL_FAILED,
        Status.CANCELLED: webhook_outbox.EVAL_CANCELED,
    },
)
