"""Settings refuse mistakes: a setting that does not exist, and default secrets in production."""

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.settings import Settings

REAL_S3_KEYS = {"s3_access_key": "loraport-deploy", "s3_secret_key": "kT3v9qXw2LmZpR7s"}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No `LORAPORT_*` setting from the machine running the tests, and no `.env` file but the test's own."""
    monkeypatch.chdir(tmp_path)
    for name in [name for name in os.environ if name.upper().startswith("LORAPORT_")]:
        monkeypatch.delenv(name)


def refusal(**values: object) -> str:
    with pytest.raises(ValidationError) as error:
        Settings(**values)  # type: ignore[arg-type]
    return str(error.value)


def test_a_setting_that_does_not_exist_is_refused_not_ignored() -> None:
    # A property, not a setting: it follows `home`, which is what such a caller means to set.
    assert "adapter_cache_dir" in refusal(adapter_cache_dir="/tmp/adapters")
    assert Settings(home=Path("/tmp/loraport")).adapter_cache_dir == Path("/tmp/loraport/adapters")


def test_an_unknown_loraport_variable_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAPORT_S3_SECRET", "typo-of-the-secret-key")
    message = refusal()
    assert "LORAPORT_S3_SECRET" in message and "typo-of-the-secret-key" not in message


def test_variables_that_are_ours_but_not_settings_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LORAPORT_API_KEY", "LORAPORT_BASE_URL", "LORAPORT_TEST_REDIS"):  # the CLI's and the tests'
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("LORAPORT_S3_REGION", "eu-west-1")
    assert Settings().s3_region == "eu-west-1"


def test_the_env_file_is_read_and_its_unknown_loraport_variables_refused(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("LORAPORT_S3_BUCKET=from-the-file\nCOMPOSE_PROJECT_NAME=other-programs-variable\n")
    assert Settings().s3_bucket == "from-the-file"

    env_file.write_text("LORAPORT_S3_BUCKT=misspelt\n")
    assert "LORAPORT_S3_BUCKT" in refusal()


def test_development_accepts_the_defaults() -> None:
    settings = Settings()
    assert settings.environment == "development" and settings.s3_secret_key == "loraport-secret"
    assert Settings(host="0.0.0.0", inference_replicas="http://gpu-1:8100").inference_replica_token is None


def test_production_refuses_the_default_s3_secret_and_says_what_to_set() -> None:
    message = refusal(environment="production", s3_access_key="loraport-deploy")
    assert "LORAPORT_S3_SECRET_KEY is the default" in message and "LORAPORT_S3_ACCESS_KEY" not in message
    assert "set the key pair your S3 store accepts" in message
    assert "LORAPORT_S3_ACCESS_KEY is the default" in refusal(environment="production", s3_secret_key="kT3v9qXw")


def test_production_refuses_through_the_environment_as_every_process_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAPORT_ENVIRONMENT", "production")
    monkeypatch.setenv("LORAPORT_S3_ACCESS_KEY", "loraport-deploy")
    assert "LORAPORT_S3_SECRET_KEY" in refusal()
    monkeypatch.setenv("LORAPORT_S3_SECRET_KEY", "kT3v9qXw2LmZpR7s")
    assert Settings().environment == "production"


def test_production_accepts_real_secrets_on_loopback() -> None:
    settings = Settings(environment="production", **REAL_S3_KEYS)
    assert settings.environment == "production" and settings.inference_replica_token is None


@pytest.mark.parametrize(
    ("where", "values"),
    [
        ("LORAPORT_INFERENCE_REPLICAS lists replicas", {"inference_replicas": "http://gpu-1:8100"}),
        ("LORAPORT_HOST is 0.0.0.0", {"host": "0.0.0.0"}),
        ("LORAPORT_HOST is gpu-1.internal", {"host": "gpu-1.internal"}),
    ],
)
def test_production_needs_a_replica_token_for_replicas_or_a_reachable_host(where: str, values: dict) -> None:
    message = refusal(environment="production", **REAL_S3_KEYS, **values)
    assert "LORAPORT_INFERENCE_REPLICA_TOKEN is not set" in message and where in message
    assert REAL_S3_KEYS["s3_secret_key"] not in message  # errors reach logs: they show no value

    with_token = Settings(environment="production", **REAL_S3_KEYS, **values, inference_replica_token="r4nd0m")
    assert with_token.inference_replica_token == "r4nd0m"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_production_on_loopback_needs_no_replica_token(host: str) -> None:
    assert Settings(environment="production", host=host, **REAL_S3_KEYS).host == host


def test_secrets_stay_out_of_the_settings_repr() -> None:
    """A traceback or a log line that shows the settings must not show the secrets in them."""
    shown = repr(
        Settings(
            s3_secret_key="s3-secret-value",
            database_url="postgresql+psycopg://loraport:db-password@db/loraport",
            bootstrap_key="lp_bootstrap-value-of-32-characters",
            inference_replica_token="replica-token-value",
        )
    )
    assert not any(secret in shown for secret in ("s3-secret-value", "db-password", "bootstrap-value", "replica-token"))


def test_a_short_bootstrap_key_is_refused_with_what_to_do() -> None:
    """It is stored as an unsalted digest, and was shown whole as its own prefix when 12 characters or fewer."""
    with pytest.raises(ValidationError, match="LORAPORT_BOOTSTRAP_KEY is 12 characters; .* at least 32"):
        Settings(bootstrap_key="lp_123456789")
    assert Settings(bootstrap_key="k" * 32).bootstrap_key == "k" * 32


def test_the_bootstrap_key_stays_out_of_child_processes_environment() -> None:
    """Only the process that prepares the deployment reads it; workers and the API's children do not need it."""
    environment = Settings(bootstrap_key="k" * 40, s3_bucket="chosen").as_environment()
    assert "LORAPORT_BOOTSTRAP_KEY" not in environment and "k" * 40 not in environment.values()
    assert environment["LORAPORT_S3_BUCKET"] == "chosen"
