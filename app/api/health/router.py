"""/healthz (the process answers) and /readyz (database, broker and storage answer)."""

from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import SettingsDep
from app.core.db import engine_for
from app.core.redis import redis_client
from app.core.settings import Settings
from app.core.storage import store_for

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


def _checks(settings: Settings) -> dict[str, Callable[[], object]]:
    return {
        "database": lambda: engine_for(settings.require("database_url")).connect().close(),
        "broker": lambda: redis_client(settings.require("redis_url"), socket_timeout=2).ping(),
        "storage": lambda: store_for(settings).ping(),
    }


@router.get("/readyz")
def readyz(settings: SettingsDep) -> JSONResponse:
    results: dict[str, str] = {}
    for name, check in _checks(settings).items():
        try:
            check()
            results[name] = "ok"
        except Exception as error:
            results[name] = f"unavailable: {type(error).__name__}"
    ready = all(value == "ok" for value in results.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": results}, status_code=200 if ready else 503
    )
