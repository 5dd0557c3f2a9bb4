"""One error hierarchy, rendered once as OpenAI's `{"error": {message, type, param, code}}`."""

import re
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy.exc
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.core.metrics import REQUESTS_REFUSED, Refusal
from app.core.outages import OUTAGES, STORAGE_ANSWERS, unavailable_service

log = structlog.get_logger()

ErrorBody = dict[str, dict[str, object]]

RETRY_AFTER_SECONDS = 2  # for a 503 of a service that is down: the openai SDK retries after it


class LoraportError(Exception):
    status_code = 400
    type = "invalid_request_error"
    code: str | None = None
    # Why the request was refused unserved, counted when it is answered; None: not a refusal by a limit.
    refusal: Refusal | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        details: dict[str, object] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details  # extra fields inside "error"; clients that do not know them ignore them
        self.headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        if code is not None:
            self.code = code

    def body(self) -> ErrorBody:
        """OpenAI's error object, as the answer's body or a stream's error chunk."""
        body = error_body(self.message, self.type, self.param, self.code)
        body["error"].update(self.details or {})
        return body

    def count_refusal(self) -> None:
        """Counts this error in `loraport_requests_refused_total` when it refuses a request by a limit."""
        if self.refusal is not None:
            REQUESTS_REFUSED.labels(self.refusal).inc()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


class InvalidRequest(LoraportError):
    pass


class AuthenticationFailed(LoraportError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(LoraportError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist or you do not have access to it.", param="model")


class BaseModelRemoved(NotFound):
    """A 404, not a 409: the SDKs retry a 409, and this lasts."""

    code = "base_model_removed"

    def __init__(self, model: str, base_model: str) -> None:
        super().__init__(
            f"The model '{model}' was fine-tuned from '{base_model}', which has been removed from this deployment, so "
            "it cannot generate. Its adapter can still be downloaded (GET /v1/models/{id}/adapter).",
            param="model",
        )


class DatasetRejected(InvalidRequest):
    """A file that failed validation: the message names the first bad lines, `validation` lists them all."""

    code = "invalid_file_format"

    def __init__(self, summary: str, validation: dict[str, Any]) -> None:
        super().__init__(summary, param="file", details={"validation": validation})


class Conflict(LoraportError):
    status_code = 409
    code = "conflict"


class UnprocessableEntity(LoraportError):
    status_code = 422


class PayloadTooLarge(LoraportError):
    status_code = 413
    code = "file_too_large"
    refusal = "limit"


class Overloaded(LoraportError):
    """Too many requests waiting; `retry_after` seconds is a fair guess of when to come back."""

    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: int, refusal: Refusal = "rate_limit") -> None:
        """`refusal`: "rate_limit" for a rate limit, "admission" for work that is full (generation, validation)."""
        super().__init__(message, retry_after=retry_after)
        self.refusal = refusal


class QuotaExceeded(LoraportError):
    """An organisation holds as much of something as the deployment allows (app.api.quotas); it clears when the
    organisation finishes, cancels or deletes something, not after a wait."""

    status_code = 429
    type = "insufficient_quota"
    code = "quota_exceeded"
    refusal = "limit"


class AdapterCorrupted(LoraportError):
    status_code = 502
    type = "server_error"
    code = "adapter_corrupted"


class GenerationTimeout(LoraportError):
    status_code = 504
    type = "server_error"
    code = "timeout"


class ServiceUnavailable(LoraportError):
    status_code = 503
    type = "server_error"
    code = "service_unavailable"


class PermissionDenied(LoraportError):
    """A live key that may not do this (the openai SDK raises `PermissionDeniedError`)."""

    status_code = 403
    code = "insufficient_permissions"


def error_body(message: str, type_: str, param: str | None, code: str | None) -> ErrorBody:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# Pydantic names the member of a union that failed (`"auto" | int` fails as `literal['auto']` and as
# `constrained-int`); the client named a field, so `param` leaves the member out.
_UNION_MEMBER = re.compile(r"^(literal\[.*\]|constrained-\w+|int|float|str|bool|none|function-\w+\[.*\])$")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    # Of a union's failures, a bound or type error says more than "should be 'auto'".
    first = sorted(exc.errors(), key=lambda error: error.get("type") == "literal_error")[0]
    location = [
        str(part)
        for part in first.get("loc", ())
        if part not in ("body", "query", "path") and not _UNION_MEMBER.match(str(part))
    ]
    param = ".".join(location) or None
    message = first.get("msg", "Invalid request")
    return (f"Invalid value for '{param}': {message}" if param else message), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LoraportError)
    async def _loraport(_: Request, exc: LoraportError) -> JSONResponse:
        exc.count_refusal()
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(error_body(message, "invalid_request_error", param, None), status_code=400)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, _: ClientDisconnect) -> Response:
        # Not an error of ours, and nobody reads the answer: one line, no traceback.
        log.info("api.client_disconnected", path=request.url.path)
        return Response(status_code=400)

    for kind, service in OUTAGES.items():
        app.add_exception_handler(kind, _outage(service))
    for kind in STORAGE_ANSWERS:
        app.add_exception_handler(kind, _storage_answer)

    @app.exception_handler(sqlalchemy.exc.DataError)
    async def _unstorable(request: Request, _: sqlalchemy.exc.DataError) -> JSONResponse:
        # A value PostgreSQL refuses (a NUL character, found by fuzzing ids and names) is the request's fault.
        log.info("api.unstorable_value", path=request.url.path)
        message = "The request holds a value that cannot be stored or looked up (a NUL character?); remove it."
        return InvalidRequest(message, code="invalid_value").response()

    app.add_exception_handler(Exception, _unexpected)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), type_, None, None), status_code=exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("api.unexpected_error", path=request.url.path)
    message = "The server hit an unexpected error; retry, and report it if it persists."
    return JSONResponse(error_body(message, "server_error", None, None), status_code=500)


async def _storage_answer(request: Request, exc: Exception) -> JSONResponse:
    """An error answer of object storage: a 503 when the store itself failed, unexpected otherwise (a NoSuchKey
    for a row's object is our fault, not the store's)."""
    service = unavailable_service(exc)
    return await (_unexpected if service is None else _outage(service))(request, exc)


def _outage(service: str) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("api.dependency_unavailable", service=service, path=request.url.path, error=type(exc).__name__)
        message = f"{service[0].upper()}{service[1:]} is unavailable for a moment; retry in a few seconds."
        return ServiceUnavailable(message, retry_after=RETRY_AFTER_SECONDS).response()

    return unavailable
