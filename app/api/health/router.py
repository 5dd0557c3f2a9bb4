"""/healthz (the process answers) and /readyz (database, broker and storage answer).

/readyz is public, so it must stay cheap however often it is called: each check makes one attempt with 2 s
timeouts (botocore alone would wait 60 s, three times), and an answer is reused for a few seconds, so a flood of
probes runs the checks once per `READY_CACHE_SECONDS`, not once per request.
"""

import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from app.core.redis import redis_client
from app.core.settings import Settings
from app.core.storage import ObjectStore

router = APIRouter(tags=["health"])
PROBE_TIMEOUT_SECONDS = 2
READY_CACHE_SECONDS = 5.0


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str]  # service → "ok" or "unavailable: <error class>"


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health()


@lru_cache
def _probe_engine(url: str) -> Engine:
    # Its own connection each time, with a connect timeout: the pool's connections would hide a database gone away.
    return create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": PROBE_TIMEOUT_SECONDS})


def _checks(settings: Settings) -> dict[str, Callable[[], object]]:
    timeouts = {"socket_timeout": PROBE_TIMEOUT_SECONDS, "socket_connect_timeout": PROBE_TIMEOUT_SECONDS}
    return {
        "database": lambda: _probe_engine(settings.require("database_url")).connect().close(),
        "broker": lambda: redis_client(settings.require("redis_url"), **timeouts).ping(),
        "storage": lambda: ObjectStore(settings, probe=True).ping(),
    }


def _run_checks(settings: Settings) -> Readiness:
    results: dict[str, str] = {}
    for name, check in _checks(settings).items():
        try:
            check()
            results[name] = "ok"
        except Exception as error:
            results[name] = f"unavailable: {type(error).__name__}"
    ready = all(value == "ok" for value in results.values())
    return Readiness(status="ready" if ready else "not ready", checks=results)


class ReadinessCache:
    """The last answer and when it was made. One thread checks at a time; while it does, the others answer with
    the previous result (they wait only for the very first), so a flood of probes holds no threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answer: tuple[float, Readiness] | None = None

    def _fresh(self) -> bool:
        return self._answer is not None and time.monotonic() - self._answer[0] <= READY_CACHE_SECONDS

    def answer(self, settings: Settings) -> Readiness:
        if not self._fresh() and self._lock.acquire(blocking=self._answer is None):
            try:
                if not self._fresh():
                    self._answer = (time.monotonic(), _run_checks(settings))
            finally:
                self._lock.release()
        assert self._answer is not None
        return self._answer[1]


def _cache(request: Request) -> ReadinessCache:
    state = request.app.state
    if getattr(state, "readiness", None) is None:
        state.readiness = ReadinessCache()
    return state.readiness


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(request: Request, response: Response) -> Readiness:
    """Ready when every service answers; a 503 names the ones that do not."""
    readiness = _cache(request).answer(request.app.state.settings)
    response.status_code = 200 if readiness.status == "ready" else 503
    return readiness
