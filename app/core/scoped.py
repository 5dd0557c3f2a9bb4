"""Tenant-scoped reads: every lookup by id names the organisation, and a miss is a 404."""

from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import NotFound

Row = TypeVar("Row")


def get_owned(session: Session, table: type[Row], organization_id: str, object_id: str, noun: str) -> Row:
    """The row with this id owned by this organisation; another organisation's row is 'not found'."""
    row = session.scalar(
        select(table).where(table.id == object_id, table.organization_id == organization_id)  # type: ignore[attr-defined]
    )
    if row is None:
        raise NotFound(f"No such {noun}: '{object_id}'", param="id")
    return row
