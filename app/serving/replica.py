"""`loraport serve-inference`: one inference backend behind internal HTTP endpoints, for API processes that
generate remotely (`LORAPORT_INFERENCE_REPLICAS`, `app/serving/remote.py`).

    POST /internal/v1/generate  {base_model, adapter, prompt_ids, max_tokens, temperature, top_p, seed, logprobs,
                                 organization}
         → one JSON line per token, {"token": id}, with "logprob" and "top_logprobs" ([[id, logprob], …]) when
           asked; a last {"error": {…, "status"}} line if generation fails after it began. A client that closes the
           connection cancels the generation.
    POST /internal/v1/warm      {base_model, adapter}
    POST /internal/v1/evict     {adapter}
    GET  /internal/v1/health

With `LORAPORT_INFERENCE_REPLICA_TOKEN` set, every request needs `Authorization: Bearer <token>`.
"""

import hmac
import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from app.core import metrics
from app.core.errors import AuthenticationFailed, LoraportError, ServiceUnavailable, error_body, install_error_handlers
from app.core.log_setup import configure_logging
from app.core.settings import Settings, get_settings
from app.ml.base_models.from_settings import registry_from_settings
from app.ml.base_models.registry import UnknownBaseModel
from app.serving.arriving import arriving
from app.serving.backend import GeneratedToken, InferenceBackend, SamplingParams, TokenStream
from app.serving.errors import EngineError
from app.serving.factory import build_local_backend
from app.serving.remote import API_PREFIX
from app.serving.warmup import AdapterWarmer, pin_models_in_background

log = structlog.get_logger()


class GenerateBody(BaseModel):
    base_model: str
    adapter: str | None = None
    prompt_ids: list[int] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = None
    logprobs: int | None = Field(default=None, ge=0)
    organization: str | None = Field(default=None, max_length=64)  # whose request (the engine's fair share)


class WarmBody(BaseModel):
    base_model: str
    adapter: str


class EvictBody(BaseModel):
    adapter: str


def _authorized(request: Request) -> None:
    expected = request.app.state.settings.inference_replica_token
    if not expected:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise AuthenticationFailed(
            "Replica requests need 'Authorization: Bearer <LORAPORT_INFERENCE_REPLICA_TOKEN>'",
            code="invalid_replica_token",
        )


router = APIRouter(prefix=API_PREFIX, dependencies=[Depends(_authorized)])


class _Generations:
    """The generations of this replica that have neither ended nor been cancelled (the health endpoint's count)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0

    def track(self, tokens: TokenStream) -> "_TrackedStream":
        with self._lock:
            self.active += 1
        return _TrackedStream(tokens, self)

    def _ended(self) -> None:
        with self._lock:
            self.active -= 1


class _TrackedStream:
    def __init__(self, tokens: TokenStream, generations: _Generations) -> None:
        self._tokens, self._generations = tokens, generations
        self._lock = threading.Lock()
        self._counted = True

    def __iter__(self) -> "_TrackedStream":
        return self

    def __next__(self) -> GeneratedToken:
        try:
            return next(self._tokens)
        except BaseException:
            self._end()
            raise

    def poll(self) -> GeneratedToken | None:
        try:
            return self._tokens.poll()
        except BaseException:
            self._end()
            raise

    def on_item(self, callback: Callable[[], None]) -> None:
        self._tokens.on_item(callback)

    def cancel(self) -> None:
        self._tokens.cancel()
        self._end()

    def _end(self) -> None:
        with self._lock:
            counted, self._counted = self._counted, False
        if counted:
            self._generations._ended()


class _TokenLines(StreamingResponse):
    """Streams the token lines; however the response ends (done, failed, client gone) the generation is
    cancelled, so its batch row is freed at once."""

    def __init__(self, tokens: TokenStream) -> None:
        super().__init__(_lines(tokens), media_type="application/x-ndjson")
        self._tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._tokens.cancel()


@router.post("/generate")
async def generate(body: GenerateBody, request: Request) -> StreamingResponse:
    backend: InferenceBackend = request.app.state.backend
    params = SamplingParams(body.max_tokens, body.temperature, body.top_p, body.seed, body.logprobs, body.organization)
    try:
        tokens = await run_in_threadpool(backend.stream_tokens, body.base_model, body.adapter, body.prompt_ids, params)
    except UnknownBaseModel as error:
        raise ServiceUnavailable(
            f"This inference replica does not serve {error}: give it the API's LORAPORT_S3_* settings, where added "
            "base models are stored"
        ) from None
    return _TokenLines(request.app.state.generations.track(tokens))


async def _lines(tokens: TokenStream) -> AsyncIterator[str]:
    try:
        async for token in arriving(tokens):  # on the loop: no pool thread waits for tokens
            yield json.dumps(_token_line(token)) + "\n"
    except LoraportError as error:
        yield _error_line(error.body(), error.status_code)
    except EngineError as error:
        yield json.dumps({"engine_error": error.wire()}) + "\n"
    except Exception:
        log.exception("replica.generation_failed")
        message = "The inference replica hit an error while generating; retry, and report it if it persists."
        yield _error_line(error_body(message, "server_error", None, None), 500)
    finally:
        tokens.cancel()


def _token_line(token: GeneratedToken) -> dict[str, Any]:
    line: dict[str, Any] = {"token": token.id}
    if token.logprob is not None:
        line |= {"logprob": token.logprob, "top_logprobs": token.top_logprobs}
    return line


def _error_line(body: dict[str, Any], status: int) -> str:
    body["error"]["status"] = status
    return json.dumps(body) + "\n"


@router.post("/warm")
async def warm(body: WarmBody, request: Request) -> dict[str, str]:
    await run_in_threadpool(request.app.state.backend.warm, body.base_model, body.adapter)
    return {"warmed": body.adapter}


@router.post("/evict")
async def evict(body: EvictBody, request: Request) -> dict[str, str]:
    await run_in_threadpool(request.app.state.backend.evict, body.adapter)
    return {"evicted": body.adapter}


@router.get("/health")
def health(request: Request) -> dict[str, Any]:
    state = request.app.state
    return {"status": "ok", "backend": type(state.backend).__name__, "generating": state.generations.active}


@asynccontextmanager
async def _warm_new_adapters(app: FastAPI) -> AsyncIterator[None]:
    """Adapters that workers announce are fetched (and loaded, where their base model is in memory) here too; the
    engine's metrics are served on LORAPORT_METRICS_PORT when set, as the API's are."""
    settings = app.state.settings
    warmer = AdapterWarmer(settings.require("redis_url"), app.state.backend)
    warmer.start()
    pin_models_in_background(settings, app.state.backend)
    served = metrics.serve(settings.metrics_host, settings.metrics_port) if settings.metrics_port else None
    try:
        yield
    finally:
        warmer.stop()
        if served:
            served.stop()
        metrics.process_exited()


def create_replica_app(settings: Settings | None = None) -> FastAPI:
    """`uvicorn app.serving.replica:create_replica_app --factory`, or `loraport serve-inference`."""
    settings = settings or get_settings()
    for name in ("redis_url", "s3_endpoint_url"):
        settings.require(name)
    configure_logging(settings.log_format)
    app = FastAPI(
        title="Loraport inference replica",
        lifespan=_warm_new_adapters,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.backend = build_local_backend(settings, registry_from_settings(settings))
    app.state.generations = _Generations()
    install_error_handlers(app)

    @app.exception_handler(EngineError)
    async def _engine_refused(_: Request, error: EngineError) -> JSONResponse:
        # The API process maps it to its HTTP answer (`app.api.generation.engine_errors`).
        return JSONResponse({"engine_error": error.wire()}, status_code=409)

    app.include_router(router)
    return app
