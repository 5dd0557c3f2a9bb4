"""Which errors mean a service we depend on is down: an S3 error answer is the store's failure when it is a 5xx (or
says so), and the request's when it is a 4xx."""

import boto3.exceptions
import botocore.exceptions
import pytest

from app.core.outages import unavailable_service


def _answer(status: int, code: str, operation: str = "GetObject") -> botocore.exceptions.ClientError:
    """The error botocore raises for an S3 error answer (HEAD answers have no body: the code is the status)."""
    response = {"Error": {"Code": code, "Message": "..."}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.exceptions.ClientError(response, operation)  # type: ignore[arg-type]


def _upload_failed(cause: Exception) -> boto3.exceptions.S3UploadFailedError:
    """As boto3's `upload_file` raises it: a new error, raised while handling the ClientError (no `from`)."""
    wrapped = boto3.exceptions.S3UploadFailedError(f"Failed to upload x to bucket/x: {cause}")
    wrapped.__context__ = cause
    return wrapped


@pytest.mark.parametrize(
    "error",
    [
        _answer(500, "InternalError"),
        _answer(503, "ServiceUnavailable"),
        _answer(503, "SlowDown", "PutObject"),
        _answer(500, "500", "HeadObject"),
        _answer(502, "502", "HeadObject"),
        _answer(504, "GatewayTimeout"),
        _answer(200, "InternalError", "CompleteMultipartUpload"),  # S3 may fail a multipart upload inside a 200
        _upload_failed(_answer(500, "InternalError", "PutObject")),
        boto3.exceptions.RetriesExceededError(botocore.exceptions.ReadTimeoutError(endpoint_url="http://s3")),
        botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3"),
    ],
    ids=lambda error: type(error).__name__ + ":" + str(getattr(error, "response", {}).get("Error", {}).get("Code")),
)
def test_a_store_that_failed_or_cannot_be_reached_is_object_storage_unavailable(error: Exception) -> None:
    assert unavailable_service(error) == "object storage"


@pytest.mark.parametrize(
    "error",
    [
        _answer(404, "NoSuchKey"),
        _answer(404, "404", "HeadObject"),
        _answer(403, "AccessDenied"),
        _answer(403, "SignatureDoesNotMatch", "PutObject"),
        _answer(400, "InvalidArgument"),
        _upload_failed(_answer(403, "AccessDenied", "PutObject")),
        boto3.exceptions.S3UploadFailedError("Failed to upload x to bucket/x"),
        ValueError("not a storage error"),
    ],
    ids=lambda error: type(error).__name__ + ":" + str(getattr(error, "response", {}).get("Error", {}).get("Code")),
)
def test_an_answer_about_the_request_is_no_outage(error: Exception) -> None:
    assert unavailable_service(error) is None
