"""Database engine and sessions: one transaction per request or task, owned by the boundary."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

import structlog
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

log = structlog.get_logger()


class Base(DeclarativeBase):
    pass


@lru_cache
def engine_for(url: str) -> Engine:
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


@lru_cache
def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url), expire_on_commit=False)


@contextmanager
def transaction(url: str) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back if it raises, then runs the `after_commit` or
    `after_rollback` actions registered in it."""
    with session_factory(url)() as session:
        try:
            with session.begin():
                yield session
        except BaseException:
            run_after_rollback(session)
            raise
        run_after_commit(session)


_AFTER_COMMIT, _AFTER_ROLLBACK = "loraport.after_commit", "loraport.after_rollback"


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Runs `action` once the session's transaction has committed, never if it rolls back: a broker message for a
    row the worker could not yet see, or an object deleted before its row, would be wrong."""
    session.info.setdefault(_AFTER_COMMIT, []).append(action)


def after_rollback(session: Session, action: Callable[[], None]) -> None:
    """Runs `action` if the session's transaction does not commit: an object stored for a row that will not be,
    for instance, is deleted."""
    session.info.setdefault(_AFTER_ROLLBACK, []).append(action)


def run_after_commit(session: Session) -> None:
    """What the boundary that committed calls: the actions `after_commit` collected, in order. Every one runs: the
    change is stored, so one that fails (an object not deleted while storage is down) is logged, costs only space,
    and neither stops the others nor turns the caller's answer into an error."""
    session.info.pop(_AFTER_ROLLBACK, None)
    _run_each(session.info.pop(_AFTER_COMMIT, []), "db.after_commit.failed")


def run_after_rollback(session: Session) -> None:
    """What the boundary that rolled back calls: the actions `after_rollback` collected, in order."""
    session.info.pop(_AFTER_COMMIT, None)
    _run_each(session.info.pop(_AFTER_ROLLBACK, []), "db.after_rollback.failed")


def _run_each(actions: list[Callable[[], None]], event: str) -> None:
    for action in actions:
        try:
            action()
        except Exception:
            log.warning(event, action=getattr(action, "__qualname__", repr(action)), exc_info=True)
