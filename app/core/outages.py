"""Errors that mean a service we depend on is down, not that the work or the request is wrong.

The API answers them with 503 and Retry-After; a training worker gives its job back to resume later.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import boto3.exceptions
import botocore.exceptions
import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
import structlog

from app.core.metrics import OUTAGES_SURVIVED

log = structlog.get_logger()

OUTAGES: dict[type[Exception], str] = {
    sqlalchemy.exc.OperationalError: "the database",
    sqlalchemy.exc.InterfaceError: "the database",
    sqlalchemy.exc.TimeoutError: "the database",  # no pooled connection free in time: busy, not the request's fault
    botocore.exceptions.ConnectionError: "object storage",
    botocore.exceptions.HTTPClientError: "object storage",
    boto3.exceptions.RetriesExceededError: "object storage",  # a download whose stream broke on every retry
    redis.exceptions.ConnectionError: "the broker",
    kombu.exceptions.OperationalError: "the broker",
}
# Error answers of object storage, an outage only when the store itself failed (`unavailable_service` tells): a 5xx
# after botocore's retries (SeaweedFS answers InternalError while it stops), not a 4xx such as NoSuchKey.
STORAGE_ANSWERS: tuple[type[Exception], ...] = (
    botocore.exceptions.ClientError,
    boto3.exceptions.S3UploadFailedError,  # boto3's upload_file wraps the ClientError
)
_STORE_FAILED_CODES = frozenset({"InternalError", "ServiceUnavailable", "SlowDown"})


def unavailable_service(error: BaseException) -> str | None:
    """The service `error` says is down ("the database", "object storage", "the broker"), or None."""
    for kind, service in OUTAGES.items():
        if isinstance(error, kind):
            return service
    return "object storage" if _store_failed(error) else None


def _store_failed(error: BaseException | None) -> bool:
    if isinstance(error, boto3.exceptions.S3UploadFailedError):
        return _store_failed(error.__context__)
    if not isinstance(error, botocore.exceptions.ClientError):
        return False
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return status >= 500 or error.response.get("Error", {}).get("Code") in _STORE_FAILED_CODES


@contextmanager
def outage_tolerated(event: str, **fields: object) -> Iterator[None]:
    """Runs the block; an outage ends it with `event` logged as a warning (what it did not do is done later, by
    the caller's fallback), any other error goes on up."""
    try:
        yield
    except Exception as error:
        service = unavailable_service(error)
        if service is None:
            raise
        OUTAGES_SURVIVED.labels(service).inc()
        log.warning(event, exc_info=True, **fields)
