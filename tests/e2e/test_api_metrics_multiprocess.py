"""The API as deployments run it, several uvicorn processes behind one port, in prometheus-client's multiprocess
mode: one metrics endpoint shows every process's requests summed."""

import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.cli.embedded.process import free_ports
from app.core.settings import Settings
from tests.helpers.services import ROOT, settings_env
from tests.helpers.waiting import eventually

REQUESTS = 12


def healthz_count(metrics_url: str) -> float | None:
    try:
        text = httpx.get(metrics_url, timeout=10).text
    except httpx.TransportError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "loraport_http_request_duration_seconds_count" and sample.labels == {
                "method": "GET",
                "route": "/healthz",
                "status": "200",
            }:
                return sample.value
    return 0.0


def test_two_api_processes_behind_one_port_are_scraped_as_one(settings: Settings, tmp_path: Path) -> None:
    port, metrics_port = free_ports(2)
    env = settings_env(settings) | {
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "LORAPORT_METRICS_PORT": str(metrics_port),
    }
    argv = ["-m", "uvicorn", "app.api.main:create_app", "--factory", "--port", str(port), "--workers", "2"]
    api = subprocess.Popen([sys.executable, *argv, "--log-level", "warning"], cwd=ROOT, env=env)
    try:
        base, metrics_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
        eventually(lambda: healthz_count(metrics_url) is not None, timeout=180, what="the metrics endpoint")
        # both processes have started once each wrote its file (a new connection per request spreads them)
        eventually(lambda: len(list(tmp_path.glob("*.db"))) >= 2, timeout=180, what="both processes' files")
        for _ in range(REQUESTS):
            assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
        assert healthz_count(metrics_url) == REQUESTS
        assert httpx.get(f"{base}/metrics", timeout=30).status_code == 404
    finally:
        api.terminate()
        api.wait(timeout=60)
