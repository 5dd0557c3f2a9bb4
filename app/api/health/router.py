"""/healthz (the process answers) and /readyz (database, broker and storage answer)."""

from collections.abc import Callable
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel

from app.api.deps import SettingsDep
from app.core.db import engine_for
from app.core.redis import redis_client
from app.core.settings import Settings
from app.core.storage import store_for

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str]  # service → "ok" or "unavailable: <error class>"


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health()


def _checks(settings: Settings) -> dict[str, Callable[[], object]]:
    return {
        "database": lambda: engine_for(settings.require("database_url")).connect().close(),
        "broker": lambda: redis_client(settings.require("redis_url"), socket_timeout=2).ping(),
        "storage": lambda: store_for(settings).ping(),
    }


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(settings: SettingsDep, response: Response) -> Readiness:
    """Ready when every service answers; a 503 names the ones that do not."""
    results: dict[str, str] = {}
    for name, check in _checks(settings).items():
        try:
            check()
            results[name] = "ok"
        except Exception as error:
            results[name] = f"unavailable: {type(error).__name__}"
    ready = all(value == "ok" for value in results.values())
    response.status_code = 200 if ready else 503
    return Readiness(status="ready" if ready else "not ready", checks=results)
