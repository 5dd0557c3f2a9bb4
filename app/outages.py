"""Errors that mean a service we depend on is down, not that the work or the request is wrong.

The API answers them with 503 and Retry-After; a training worker gives its job back to resume later.
"""

import botocore.exceptions
import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc

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
