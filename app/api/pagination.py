"""Cursor pagination the openai SDK understands: `after=<id>`, `limit`, `has_more`."""

from collections.abc import Sequence
from typing import Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from app.core.errors import InvalidRequest

Row = TypeVar("Row")
Item = TypeVar("Item")


class ListPage(BaseModel, Generic[Item]):
    """A page of a list in OpenAI's shape; the next page is `after=last_id`."""

    object: Literal["list"] = "list"
    data: list[Item]
    has_more: bool
    first_id: str | None
    last_id: str | None


class _Identified(Protocol):
    @property
    def id(self) -> str: ...


Listed = TypeVar("Listed", bound=_Identified)


def paginate(
    session: Session,
    table: type[Row],
    scope: Sequence[ColumnElement[bool]],
    after: str | None,
    limit: int,
    newest_first: bool = True,
) -> tuple[list[Row], bool]:
    """Rows of `table` within `scope`, after the row with id `after`, and whether more follow."""
    seq: Any = table.seq  # type: ignore[attr-defined]
    query = select(table).where(*scope)
    if after:
        anchor = session.scalar(select(seq).where(table.id == after, *scope))  # type: ignore[attr-defined]
        if anchor is None:
            raise InvalidRequest(f"No object with id '{after}' to page after", param="after")
        query = query.where(seq < anchor if newest_first else seq > anchor)
    query = query.order_by(seq.desc() if newest_first else seq.asc()).limit(limit + 1)
    rows = list(session.scalars(query))
    return rows[:limit], len(rows) > limit


def list_page(items: list[Listed], has_more: bool) -> "ListPage[Listed]":
    """`items` as a page, `has_more` when more follow its last one."""
    first_id, last_id = (items[0].id, items[-1].id) if items else (None, None)
    return ListPage(data=items, has_more=has_more, first_id=first_id, last_id=last_id)
