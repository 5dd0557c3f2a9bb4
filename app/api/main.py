"""The FastAPI application: `uvicorn app.api.main:create_app --factory`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.api.body_limit import BodyLimit
from app.api.chat.router import router as chat_router
from app.api.completions.router import router as completions_router
from app.api.dashboard import install_dashboard
from app.api.evaluations.router import router as evaluations_router
from app.api.files.router import router as files_router
from app.api.generation.admission import Admission
from app.api.generation.engine_errors import install_engine_error_handler
from app.api.generation.shared_holds import SharedHolds
from app.api.health.router import router as health_router
from app.api.jobs.router import router as jobs_router
from app.api.models.router import router as models_router
from app.api.orgs.rate_limit import RateLimiter
from app.api.orgs.router import router as api_keys_router
from app.api.request_metrics import RequestMetrics
from app.api.uploads.router import router as uploads_router
from app.api.usage.router import router as usage_router
from app.api.webhooks.router import router as webhooks_router
from app.core import background_processes, metrics
from app.core.errors import install_error_handlers
from app.core.log_setup import configure_logging
from app.core.settings import Settings, get_settings
from app.core.work_metrics import WorkCollector
from app.ml.base_models.from_settings import registry_from_settings
from app.serving.factory import build_inference_backend, replica_urls
from app.serving.warmup import AdapterWarmer, pin_models_in_background

# The routes that stream a multipart body under their own limits; every other body is bounded by `BodyLimit`.
_STREAMED_UPLOADS = (r"/v1/files/?", r"/v1/uploads/[^/]+/parts/?")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """While the app runs, adapters announced by workers are fetched before their first request (replicas,
    where generation runs on them, do that themselves), and metrics are served on their own port when one is set."""
    settings = app.state.settings
    metrics_server = _serve_metrics(settings)
    warmer = None if replica_urls(settings) else AdapterWarmer(settings.require("redis_url"), app.state.engine)
    if warmer:
        warmer.start()
        pin_models_in_background(settings, app.state.engine)
    try:
        yield
    finally:
        if warmer:
            warmer.stop()
        if metrics_server:
            metrics_server.stop()
        metrics.process_exited()


def _serve_metrics(settings: Settings) -> metrics.MetricsServer | None:
    """`/metrics` on LORAPORT_METRICS_HOST:LORAPORT_METRICS_PORT, never on the public app (which answers it 404);
    the jobs' figures are read from PostgreSQL at each scrape."""
    if settings.metrics_port is None:
        return None
    collector = WorkCollector(settings.require("database_url"))
    return metrics.serve(settings.metrics_host, settings.metrics_port, extra=[collector])


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    for name in ("database_url", "redis_url", "s3_endpoint_url"):
        settings.require(name)
    configure_logging(settings.log_format)
    app = FastAPI(
        title="Loraport",
        version=__version__,
        description="OpenAI-compatible LoRA fine-tuning and serving",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    background_processes.preload(["app.api.files.validation_process", "app.api.files.report_runs"])
    app.state.registry = registry_from_settings(settings)
    app.state.engine = build_inference_backend(settings, app.state.registry)
    app.state.rate_limiter = RateLimiter(settings.require("redis_url"), settings.rate_limit_per_minute)
    app.state.admission = Admission(
        settings.inference_concurrency,
        settings.inference_queue_size,
        settings.inference_per_organization,
        settings.inference_share_per_organization,
        SharedHolds(settings.require("redis_url"), settings.inference_timeout_seconds + 60),
    )
    install_error_handlers(app)
    install_engine_error_handler(app)
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_json_body_bytes, max_depth=settings.max_json_depth, streamed=_STREAMED_UPLOADS
    )
    routers = (
        health_router, files_router, uploads_router, jobs_router, evaluations_router, models_router, chat_router,
        completions_router, api_keys_router, usage_router, webhooks_router,
    )  # fmt: skip
    for router in routers:
        app.include_router(router)
    install_dashboard(app)
    # Added last: outermost, it times the refusals of the middleware too.
    app.add_middleware(RequestMetrics, templates=lambda: app.openapi()["paths"])
    return app
