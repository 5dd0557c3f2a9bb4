"""Liveness and readiness, against the real services and against an unreachable one."""

import httpx
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


def test_healthz_and_readyz_with_every_service_up(api_base_url: str) -> None:
    assert httpx.get(f"{api_base_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api_base_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


def test_readyz_names_the_service_that_is_down(settings: Settings) -> None:
    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(broken)) as api:
        response = api.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == "ok" and checks["storage"] == "ok"
    assert checks["broker"].startswith("unavailable")
