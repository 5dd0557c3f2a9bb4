"""Usage per organisation per UTC day: inference tokens by model, trained tokens by base model, stored bytes.

Every count is an upsert into `usage_days` made in the transaction of the work it counts (a job's publish, a
file's row), so a transaction retried after a failure counts once. Stored bytes follow the `files` table itself:
its rows' inserts and deletes add and take away their bytes in the flush that writes them, whichever code path
stores or deletes a file.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Connection, Date, event, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Mapper, Session

from app.core.tables import StoredFile, UsageDay

COMPLETIONS, FINE_TUNING, STORAGE = "completions", "fine_tuning", "storage"
_COUNTS = ("requests", "input_tokens", "output_tokens", "trained_tokens", "stored_bytes")
# The database's clock, in UTC: every process agrees on which day a transaction counts in.
_TODAY = func.cast(func.timezone("UTC", func.now()), Date)


def add(
    bind: Session | Connection,
    organization_id: str,
    kind: str,
    model: str = "",
    **counts: int,
) -> None:
    """Adds `counts` (of `requests`, `input_tokens`, `output_tokens`, `trained_tokens`, `stored_bytes`) to today's
    row of the organisation's `kind` of usage of `model`."""
    if unknown := set(counts) - set(_COUNTS):
        raise ValueError(f"not usage counts: {sorted(unknown)}")
    values = dict.fromkeys(_COUNTS, 0) | counts
    statement = insert(UsageDay).values(organization_id=organization_id, day=_TODAY, kind=kind, model=model, **values)
    increments = {name: getattr(UsageDay, name) + statement.excluded[name] for name in counts}
    bind.execute(statement.on_conflict_do_update(index_elements=list(UsageDay.__table__.primary_key), set_=increments))


@dataclass(frozen=True)
class DayOfUsage:
    day: date
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    trained_tokens: int
    stored_bytes: int


def days(
    session: Session, organization_id: str, kind: str, first: date, last: date, models: Sequence[str] | None
) -> list[DayOfUsage]:
    """The organisation's rows of `kind` from `first` to `last` (inclusive), by day then model."""
    query = select(UsageDay).where(
        UsageDay.organization_id == organization_id, UsageDay.kind == kind, UsageDay.day.between(first, last)
    )
    if models:
        query = query.where(UsageDay.model.in_(models))
    return [
        DayOfUsage(row.day, row.model, *(getattr(row, name) for name in _COUNTS))
        for row in session.scalars(query.order_by(UsageDay.day, UsageDay.model))
    ]


def stored_before(session: Session, organization_id: str, day: date) -> int:
    """The organisation's stored bytes at the start of `day`: every addition and removal before it."""
    query = select(func.coalesce(func.sum(UsageDay.stored_bytes), 0)).where(
        UsageDay.organization_id == organization_id, UsageDay.kind == STORAGE, UsageDay.day < day
    )
    return int(session.scalar(query) or 0)


@event.listens_for(StoredFile, "after_insert")
def _file_stored(_: Mapper[StoredFile], connection: Connection, file: StoredFile) -> None:
    add(connection, file.organization_id, STORAGE, stored_bytes=file.bytes)


@event.listens_for(StoredFile, "after_delete")
def _file_deleted(_: Mapper[StoredFile], connection: Connection, file: StoredFile) -> None:
    add(connection, file.organization_id, STORAGE, stored_bytes=-file.bytes)
