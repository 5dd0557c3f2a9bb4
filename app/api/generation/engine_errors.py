"""The engine's refusals in HTTP: a busy slot is a 429 with Retry-After, an adapter it cannot serve a 422, a model
that failed while generating a 500 that names it."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.core.errors import LoraportError, Overloaded, ServiceUnavailable, UnprocessableEntity
from app.serving.errors import AdapterRankUnsupported, EngineError, GenerationFailed, SlotsBusy


class ModelFailed(LoraportError):
    """The server's fault, not the request's: the model broke while generating (`GenerationFailed`)."""

    status_code = 500
    type = "server_error"
    code = "generation_failed"


def http_error(error: EngineError) -> LoraportError:
    if isinstance(error, SlotsBusy):
        return Overloaded(error.message, retry_after=error.retry_after or 1, refusal="admission")
    if isinstance(error, AdapterRankUnsupported):
        return UnprocessableEntity(error.message, code="adapter_rank_unsupported")
    if isinstance(error, GenerationFailed):
        return ModelFailed(f"{error.message}; retry, and report it if it persists")
    return ServiceUnavailable(error.message, retry_after=error.retry_after)


def install_engine_error_handler(app: FastAPI) -> None:
    @app.exception_handler(EngineError)
    async def _engine_refused(_: Request, error: EngineError) -> JSONResponse:
        refused = http_error(error)
        refused.count_refusal()
        return refused.response()
