"""Every setting in one object, read from `LORAPORT_*` environment variables (or a `.env` file).

A setting nobody defined is refused, not ignored: a misspelt name would otherwise leave its default in place
without a word. In production, default secrets are refused too, by every process that reads the settings."""

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

_PREFIX = "LORAPORT_"
# Ours but not settings: the CLI's client side (`--base-url`, `--api-key`) and the test suite's services.
_OTHER_VARIABLES = ("LORAPORT_BASE_URL", "LORAPORT_API_KEY", "LORAPORT_TEST_")
DEFAULT_S3_ACCESS_KEY, DEFAULT_S3_SECRET_KEY = "loraport", "loraport-secret"
MIN_BOOTSTRAP_KEY_LENGTH = 32
# Read only by the process that prepares the deployment (`loraport up`, `python -m app.cli.migrate`).
_NOT_FOR_CHILDREN = {"bootstrap_key"}
UrlSetting = Literal["database_url", "redis_url", "s3_endpoint_url"]


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value may be a secret, and errors end up in logs.
    model_config = SettingsConfigDict(
        env_prefix=_PREFIX, env_file=".env", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    # production: the process refuses to start with a default secret (`_no_default_secrets_in_production`).
    environment: Literal["development", "production"] = "development"
    home: Path = Field(default=Path.home() / ".local/share/loraport", description="data, caches, embedded servers")
    host: str = "127.0.0.1"
    port: int = 8000
    log_format: Literal["console", "json"] = "console"  # json: one object per line, for log collectors
    # Prometheus metrics (README "Metrics"), never on the public port: bind them to an address only the scraper
    # reaches. Unset: not served. The API serves them on metrics_port, a Celery worker on worker_metrics_port.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)

    # None means "start an embedded server" under `loraport up`; the API and worker need them set.
    database_url: str | None = Field(default=None, repr=False)  # may hold a password: kept out of reprs
    redis_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_bucket: str = "loraport"
    s3_access_key: str = DEFAULT_S3_ACCESS_KEY
    s3_secret_key: str = Field(default=DEFAULT_S3_SECRET_KEY, repr=False)
    s3_region: str = "us-east-1"
    # boto3 >= 1.36 sends CRC checksums that some S3-compatible stores reject; only AWS needs "when_supported".
    s3_checksum_mode: Literal["when_required", "when_supported"] = "when_required"

    bootstrap_key: str | None = Field(default=None, repr=False)
    bootstrap_org: str = "default"

    default_base_model: str = "smollm2-135m-instruct"

    max_upload_bytes: int = 1024**3
    # A chat, completion, job or evaluation request; larger is a 413, refused before it is parsed. A prompt that fills
    # a 128k-token context is about 0.5 MB of JSON (0.8 MB escaped at one character a token): 2 MiB holds any prompt
    # a served model can take, and an 8 MB one would hold the event loop for 0.1 s to parse (json.loads keeps the
    # interpreter lock throughout, so the inference engine's thread waits too).
    max_json_body_bytes: int = 2 * 1024**2
    max_line_bytes: int = 50 * 1024**2  # one example; a longer line is refused as `line_too_long`
    max_json_depth: int = Field(default=64, ge=1)  # arrays/objects in one another, in a JSON body or a line
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The base models a training worker may load (a JSON list; unset: any): a host without room for every model's
    # weights takes only the jobs of those it has.
    worker_base_models: tuple[str, ...] | None = None
    torch_threads: int | None = None
    adapter_cache_size: int = 8  # adapters kept in memory per base model, at most …
    adapter_cache_megabytes: int = Field(default=2048, ge=1)  # … and at most this much of their weights
    max_new_tokens_limit: int = 2048
    rate_limit_per_minute: int = Field(default=600, ge=0)  # requests per API key; 0: no limit
    max_choices: int = Field(default=8, ge=1)  # the largest `n` a completion request may ask for
    # Admission to the inference engine: generations at once, requests waiting beyond those (then 429), and
    # requests (running and waiting) one organisation may hold, so that one tenant cannot starve the rest.
    inference_concurrency: int = Field(default=16, ge=1)
    inference_queue_size: int = Field(default=64, ge=0)
    inference_per_organization: int = Field(default=32, ge=1)
    inference_timeout_seconds: float = Field(default=300, gt=0)  # a whole request, waiting included
    # Where generation runs: "torch" is the built-in engine (CPU or CUDA), "vllm" needs the `vllm` extra and CUDA.
    inference_backend: Literal["torch", "vllm"] = "torch"
    # Comma-separated base URLs of `loraport serve-inference` replicas; empty: generate in the API process.
    inference_replicas: str = ""
    inference_replica_token: str | None = Field(default=None, repr=False)  # shared by the API and its replicas
    # Fine-tuned model ids loaded at start and never evicted (comma-separated).
    pinned_models: str = ""
    # A long prompt is prefilled this many tokens at a time, with a decode step of the running rows in between.
    prefill_chunk_tokens: int = Field(default=512, ge=16)
    # CPU threads of the torch engine; unset: every core but one (see `generation_threads`).
    inference_threads: int | None = Field(default=None, ge=1)

    # Engine and admission limits (issue 19): one tenant's requests cannot take the whole engine.
    inference_share_per_organization: float = Field(default=0.5, gt=0, le=1)  # of the running generation slots
    # Rows (choices) of one organisation that start decoding while another's share the engine; unset: 1 on a CPU,
    # half the batch on a GPU (`app.serving.factory.rows_per_organization_when_shared`).
    inference_rows_per_organization_when_shared: int | None = Field(default=None, ge=1)
    max_serving_lora_rank: int = Field(default=64, ge=1)  # adapters of a higher LoRA rank are refused for serving
    adapter_disk_cache_megabytes: int = Field(default=10240, ge=1)  # adapter files kept on disk, LRU evicted

    # A running job whose worker has been silent this long is re-queued; its worker renews every third of it.
    job_lease_seconds: int = Field(default=90, ge=3)
    reconcile_interval_seconds: float = Field(default=60, gt=0)  # how often the reaper looks for stuck jobs
    max_job_attempts: int = 3
    # A queued job that no live training worker can run (QLoRA without a CUDA worker) fails after this long.
    unrunnable_job_timeout_seconds: float = Field(default=3600, gt=0)
    # A job whose database or object storage went down is given back and resumes no sooner than this later.
    outage_retry_seconds: float = Field(default=30, ge=0)
    # Data reports (files): computed for the API process by this many background threads, each in a child process,
    # one per file and tokenizer at a time; a claim older than the stale time (its process died?) is taken over.
    # 1 GiB takes about 40 min.
    report_workers: int = Field(default=2, ge=1)
    report_stale_after_seconds: float = Field(default=2 * 3600, gt=0)

    # Fair shares and quotas: what one organisation may hold at once, so that one tenant cannot crowd out the
    # others (README "Limits per organisation"); 0: no limit.
    max_active_jobs_per_organization: int = Field(default=10, ge=0)  # fine-tuning jobs queued or running
    max_active_evaluations_per_organization: int = Field(default=5, ge=0)  # evaluations queued or running
    max_stored_bytes_per_organization: int = Field(default=50 * 1024**3, ge=0)  # files plus open uploads' bytes
    max_open_uploads_per_organization: int = Field(default=20, ge=0)  # uploads pending completion
    max_webhook_endpoints_per_organization: int = Field(default=20, ge=0)  # each finish is sent to every one
    rate_limit_per_minute_per_organization: int = Field(default=1800, ge=0)  # requests of all its keys together
    # Uploads are validated in child processes of the API (one each): at most this many at once in one API process,
    # and this many of one organisation; beyond, an upload is refused with a 429.
    upload_validation_processes: int = Field(default=8, ge=1)
    upload_validations_per_organization: int = Field(default=2, ge=1)
    idempotency_ttl_hours: float = Field(default=24, gt=0)  # how long an Idempotency-Key answer is kept (as OpenAI)

    # Training workers and the API's child processes (upload validation, data reports) run at this nice value
    # (0-19), below requests, so that on a host they share with the API a chat is not queued behind them for the CPU.
    # 19: a thread at nice 10 on the engine's core still takes ~10% of it (CFS weight 110 against 1024), at 19 ~1.5%
    # (weight 15); the noisy-neighbour bench's chat p99 went from 2.1x to 1.9x its quiet figure.
    background_niceness: int = Field(default=19, ge=0, le=19)

    # Training worker (issue 19): bounds on what one job may hold a worker for and write.
    # A job or evaluation running longer fails: a runaway one must not hold a worker for ever (a day fits any sane job).
    job_time_limit_seconds: float = Field(default=24 * 3600, gt=0)
    # Metrics events kept per job: every step up to this many, then thinned to about this many (the last always kept).
    max_metrics_events: int = Field(default=2000, ge=10)

    # Security (issue 19): login cookie behind a TLS proxy, failed-authentication throttle, bootstrap key strength.
    # Honour `X-Forwarded-Proto: https` for the login cookie's Secure flag: only behind a proxy that sets it.
    trust_forwarded_proto: bool = False
    failed_auth_per_minute: int = Field(default=20, ge=0)  # failed authentications per client IP; 0: no limit
    dashboard_session_hours: int = Field(default=24 * 7, ge=1)  # a dashboard login lasts this long

    # Webhooks (README "Webhooks"): only https URLs on public addresses, checked after DNS resolution, except the
    # hosts and networks listed here (comma-separated hostnames and CIDRs, e.g. "hooks.internal,10.1.0.0/16"), which
    # may also use http.
    webhook_allowed_hosts: str = ""
    webhook_timeout_seconds: float = Field(default=10, gt=0)  # one delivery, connect to last byte read
    # A delivery that fails is retried after this, then twice as long each time (at most an hour) …
    webhook_first_retry_seconds: float = Field(default=30, ge=0)
    # … for this long after the event, then marked failed: more than a day, so a receiver down overnight loses nothing.
    webhook_retry_hours: float = Field(default=26, gt=0)

    @field_validator("bootstrap_key")
    @classmethod
    def _long_bootstrap_key(cls, key: str | None) -> str | None:
        # Stored as an unsalted SHA-256 digest, which is safe only for a key too long to guess.
        if key is not None and len(key) < MIN_BOOTSTRAP_KEY_LENGTH:
            raise ValueError(
                f"LORAPORT_BOOTSTRAP_KEY is {len(key)} characters; an admin key needs at least "
                f"{MIN_BOOTSTRAP_KEY_LENGTH} random ones (e.g. `lp_$(openssl rand -hex 24)`)"
            )
        return key

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        dotenv = _SettingsOnly(dotenv_settings)
        return (
            init_settings,
            env_settings,
            dotenv,
            file_secret_settings,
            _UnknownVariables(env_settings, dotenv_settings),
        )

    @model_validator(mode="after")
    def _no_default_secrets_in_production(self) -> Self:
        if self.environment == "production" and (problems := _production_problems(self)):
            raise ValueError(f"LORAPORT_ENVIRONMENT is production, so: {'; '.join(problems)}.")
        return self

    @property
    def model_cache_dir(self) -> Path:
        return self.home / "models"

    @property
    def adapter_cache_dir(self) -> Path:
        return self.home / "adapters"

    def as_environment(self) -> dict[str, str]:
        """These settings as `LORAPORT_*` variables, to hand to a child process; the bootstrap key stays here."""
        return {
            f"LORAPORT_{name.upper()}": str(value)
            for name, value in self.model_dump(exclude=_NOT_FOR_CHILDREN).items()
            if value is not None
        }

    def require(self, name: UrlSetting) -> str:
        """The value of a URL setting that this process cannot run without."""
        value: str | None = getattr(self, name)
        if not value:
            raise RuntimeError(f"LORAPORT_{name.upper()} is not set; run `loraport up` or set it in the environment")
        return value


def _production_problems(settings: Settings) -> list[str]:
    """What a deployment must not run with: S3 credentials anyone can read in our source, and replicas that take
    requests from anyone who reaches them."""
    problems = []
    defaults = [
        f"LORAPORT_S3_{name.upper()} is the default '{default}'"
        for name, value, default in (
            ("access_key", settings.s3_access_key, DEFAULT_S3_ACCESS_KEY),
            ("secret_key", settings.s3_secret_key, DEFAULT_S3_SECRET_KEY),
        )
        if value == default
    ]
    if defaults:
        problems.append(f"{' and '.join(defaults)}: set the key pair your S3 store accepts, the same in every process")
    if not settings.inference_replica_token:
        if settings.inference_replicas:
            where = "LORAPORT_INFERENCE_REPLICAS lists replicas"
        elif not _is_loopback(settings.host):
            where = f"LORAPORT_HOST is {settings.host}, reachable from other machines"
        else:
            return problems
        problems.append(
            f"LORAPORT_INFERENCE_REPLICA_TOKEN is not set but {where}: set the same random token on the API and its "
            "replicas, which refuse requests without it"
        )
    return problems


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _SettingsOnly(PydanticBaseSettingsSource):
    """`source`'s values for settings, without the file's other variables: docker compose reads the same `.env`,
    and its variables for other programs are none of ours."""

    def __init__(self, source: PydanticBaseSettingsSource) -> None:
        super().__init__(source.settings_cls)
        self._source = source

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._source.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        return {name: value for name, value in self._source().items() if name in self.settings_cls.model_fields}


class _UnknownVariables(PydanticBaseSettingsSource):
    """`LORAPORT_*` variables, in the environment or the `.env` file, that name no setting: handed to validation
    under their own names, which `extra="forbid"` refuses (`LORAPORT_S3_SECRET: Extra inputs are not permitted`)."""

    def __init__(self, env: PydanticBaseSettingsSource, dotenv: PydanticBaseSettingsSource) -> None:
        super().__init__(env.settings_cls)
        # The `.env` source is an environment source too, reading its file instead of the process's environment.
        self._sources = [source for source in (env, dotenv) if isinstance(source, EnvSettingsSource)]

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        known = {f"{_PREFIX}{name.upper()}" for name in self.settings_cls.model_fields}
        names = {name.upper() for source in self._sources for name in source.env_vars}
        unknown = {name for name in names if name.startswith(_PREFIX) and name not in known}
        return {name: "set" for name in unknown if not name.startswith(_OTHER_VARIABLES)}


@lru_cache
def get_settings() -> Settings:
    return Settings()
