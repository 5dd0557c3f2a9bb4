"""Errors that mean a service we depend on is down, not that the work or the request is wrong.

The API answers them with 503 and Retry-After; a training worker gives its job back to resume later.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import botocore.exceptions
import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
import structlog

log = structlog.get_logger()

OUTAGES: dict[type[Exception], str] = {
    sqlalchemy.exc.OperationalError: "the database",
    sqlalchemy.exc.InterfaceError: "the database",
    botocore.exceptions.ConnectionError: "object storage",
    botocore.exceptions.HTTPClientError: "object storage",
    redis.exceptions.ConnectionError: "the broker",
    kombu.exceptions.OperationalError: "the broker",
}


def unavailable_service(error: BaseException) -> str | None:
    """The service `error` says is down ("the database", "object storage", "the broker"), or None."""
    for kind, service in OUTAGES.items():
        if isinstance(error, kind):
            return service
    return None


@contextmanager
def outage_tolerated(event: str, **fields: object) -> Iterator[None]:
    """Runs the block; an outage ends it with `event` logged as a warning (what it did not do is done later, by
    the caller's fallback), any other error goes on up."""
    try:
        yield
    except Exception as error:
        if unavailable_service(error) is None:
            raise
        log.warning(event, exc_info=True, **fields)
