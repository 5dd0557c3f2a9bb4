"""Tenant-scoped reads: every lookup by id names the organisation, and a miss is a 404."""

from typing import ClassVar, Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Mapped, Session

from app.core.errors import NotFound


class OwnedTable(Protocol):
    """A table whose rows have a string `id` and belong to an organisation."""

    id: ClassVar[Mapped[str]]
    organization_id: ClassVar[Mapped[str]]


Row = TypeVar("Row", bound=OwnedTable)


def get_owned(session: Session, table: type[Row], organization_id: str, object_id: str, noun: str) -> Row:
    """The row with this id owned by this organisation; another organisation's row is 'not found'."""
    row = session.scalar(select(table).where(table.id == object_id, table.organization_id == organization_id))
    if row is None:
        raise NotFound(f"No such {noun}: '{object_id}'", param="id")
    return row
