"""The FastAPI application: `uvicorn app.main:create_app --factory`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.base_models.from_settings import registry_from_settings
from app.body_limit import JsonBodyLimit
from app.catalog.router import router as models_router
from app.chat.router import router as chat_router
from app.completions.router import router as completions_router
from app.config import Settings, get_settings
from app.dashboard import install_dashboard
from app.errors import install_error_handlers
from app.evaluations.router import router as evaluations_router
from app.files.router import router as files_router
from app.health.router import router as health_router
from app.inference.admission import Admission
from app.inference.factory import build_inference_backend, replica_urls
from app.inference.warmup import AdapterWarmer, pin_models_in_background
from app.jobs.router import router as jobs_router
from app.log_setup import configure_logging
from app.orgs.rate_limit import RateLimiter
from app.orgs.router import router as api_keys_router
from app.uploads.router import router as uploads_router


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """While the app runs, adapters announced by workers are fetched before their first request; replicas,
    where generation runs on them, do that themselves."""
    settings = app.state.settings
    warmer = None if replica_urls(settings) else AdapterWarmer(settings.require("redis_url"), app.state.engine)
    if warmer:
        warmer.start()
        pin_models_in_background(settings, app.state.engine)
    try:
        yield
    finally:
        if warmer:
            warmer.stop()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    for name in ("database_url", "redis_url", "s3_endpoint_url"):
        settings.require(name)
    configure_logging(settings.log_format)
    app = FastAPI(
        title="Loraport",
        version="0.1.0",
        description="OpenAI-compatible LoRA fine-tuning and serving",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry_from_settings(settings)
    app.state.engine = build_inference_backend(settings, app.state.registry)
    app.state.rate_limiter = RateLimiter(settings.require("redis_url"), settings.rate_limit_per_minute)
    app.state.admission = Admission(
        settings.inference_concurrency, settings.inference_queue_size, settings.inference_per_organization
    )
    install_error_handlers(app)
    app.add_middleware(JsonBodyLimit, max_bytes=settings.max_json_body_bytes, max_depth=settings.max_json_depth)
    routers = (
        health_router, files_router, uploads_router, jobs_router, evaluations_router, models_router, chat_router,
        completions_router, api_keys_router,
    )  # fmt: skip
    for router in routers:
        app.include_router(router)
    install_dashboard(app)
    return app
