"""Liveness and readiness, against the real services and against an unreachable one."""

import contextlib
import socket
import threading

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.settings import Settings


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


class SilentServer:
    """Accepts connections and never answers, as a storage host behind a dead proxy does; counts the connections."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.accepted.append(self.socket.accept()[0])


def test_readyz_tries_a_silent_service_once_and_reuses_its_answer(settings: Settings) -> None:
    """/readyz is public: a flood of probes must not multiply checks, nor each wait out botocore's 3 × 60 s."""
    silent = SilentServer()
    with TestClient(create_app(settings.model_copy(update={"s3_endpoint_url": silent.url}))) as api:
        answers = [api.get("/readyz") for _ in range(5)]

    assert {answer.status_code for answer in answers} == {503}
    assert answers[0].json()["checks"]["storage"].startswith("unavailable")
    assert len(silent.accepted) == 1  # one attempt, no retries, and the four probes after it reuse its answer


def test_storage_down_is_a_retryable_503_in_openai_shape(settings: Settings, org_key: str) -> None:
    storage_down = settings.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:1"})
    with TestClient(create_app(storage_down), raise_server_exceptions=False) as api:
        response = api.post(
            "/v1/files",
            headers={"Authorization": f"Bearer {org_key}"},
            files={"file": ("t.jsonl", b'{"messages": [{"role": "assistant", "content": "x"}]}\n')},
            data={"purpose": "fine-tune"},
        )
    assert response.status_code == 503 and response.headers["retry-after"]
    assert response.json()["error"]["type"] == "server_error"


def test_an_unexpected_failure_is_a_500_in_openai_shape_logged_without_locals(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(settings)
    secret = "lp_local-variable-never-logged"

    def broken() -> None:
        held = secret  # noqa: F841 (a local the traceback must not print)
        raise RuntimeError("boom")

    app.add_api_route("/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as api:
        response = api.get("/broken")

    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error" and "boom" not in response.text
    logged = capsys.readouterr().err
    assert "api.unexpected_error" in logged and "RuntimeError: boom" in logged and secret not in logged
