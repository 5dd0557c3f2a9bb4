"""Every setting in one object, read from `LORAPORT_*` environment variables."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAPORT_", env_file=".env", extra="ignore", frozen=True)

    home: Path = Field(default=Path.home() / ".local/share/loraport", description="data, caches, embedded servers")
    host: str = "127.0.0.1"
    port: int = 8000
    log_format: Literal["console", "json"] = "console"  # json: one object per line, for log collectors

    # None means "start an embedded server" under `loraport up`; the API and worker need them set.
    database_url: str | None = None
    redis_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_bucket: str = "loraport"
    s3_access_key: str = "loraport"
    s3_secret_key: str = "loraport-secret"
    s3_region: str = "us-east-1"
    # boto3 >= 1.36 sends CRC checksums that some S3-compatible stores reject; only AWS needs "when_supported".
    s3_checksum_mode: Literal["when_required", "when_supported"] = "when_required"

    bootstrap_key: str | None = None
    bootstrap_org: str = "default"

    default_base_model: str = "smollm2-135m-instruct"
    base_models_file: Path | None = Field(default=None, description="JSON file of extra base models")

    max_upload_bytes: int = 1024**3
    max_json_body_bytes: int = 8 * 1024**2  # a chat, completion, job or evaluation request; larger is a 413
    max_line_bytes: int = 50 * 1024**2  # one example; a longer line is refused as `line_too_long`
    max_json_depth: int = Field(default=64, ge=1)  # arrays/objects in one another, in a JSON body or a line
    device: Literal["auto", "cpu", "cuda"] = "auto"
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
    inference_replica_token: str | None = None  # shared secret between the API and its replicas
    # Fine-tuned model ids loaded at start and never evicted (comma-separated).
    pinned_models: str = ""
    # A long prompt is prefilled this many tokens at a time, with a decode step of the running rows in between.
    prefill_chunk_tokens: int = Field(default=512, ge=16)
    # CPU threads of the torch engine; unset: every core but one (see `generation_threads`).
    inference_threads: int | None = Field(default=None, ge=1)

    # A running job whose worker has been silent this long is re-queued; its worker renews every third of it.
    job_lease_seconds: int = Field(default=90, ge=3)
    reconcile_interval_seconds: float = Field(default=60, gt=0)  # how often the reaper looks for stuck jobs
    max_job_attempts: int = 3
    # A job whose database or object storage went down is given back and resumes no sooner than this later.
    outage_retry_seconds: float = Field(default=30, ge=0)

    @property
    def model_cache_dir(self) -> Path:
        return self.home / "models"

    @property
    def adapter_cache_dir(self) -> Path:
        return self.home / "adapters"

    def as_environment(self) -> dict[str, str]:
        """These settings as `LORAPORT_*` variables, to hand to a child process."""
        return {
            f"LORAPORT_{name.upper()}": str(value) for name, value in self.model_dump().items() if value is not None
        }

    def require(self, name: str) -> str:
        """The value of a URL setting that this process cannot run without."""
        value = getattr(self, name)
        if not value:
            raise RuntimeError(f"LORAPORT_{name.upper()} is not set; run `loraport up` or set it in the environment")
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
