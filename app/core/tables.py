"""The schema: every row that names a tenant carries `organization_id`.

`seq` columns give a monotonic insertion order for cursor pagination (`after=<id>`); timestamps are
shown to clients with one-second precision and cannot order rows made in the same second.
"""

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.schema import UniqueConstraint

from app.core.db import Base


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _now()
    # When a worker last claimed one of its jobs: the fair queue (app.core.fair_queue) serves the longest-waiting first.
    last_job_claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _now()
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))  # manages keys


class StoredFile(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    status_details: Mapped[str | None] = mapped_column(Text)
    storage_key: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    example_count: Mapped[int] = mapped_column(Integer, default=0)
    format: Mapped[str | None] = mapped_column(String(32))  # app.ml.datasets formats: chat, prompt_completion, ...
    # The data report (app.api.files.report), computed once in the background; None until then. Deferred: it can
    # be tens of kilobytes, and lists, retrieves, deletes and job creation never need it.
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, deferred=True)
    # None (never asked for), pending (claimed at `report_claimed_at` by the process computing it), ready or failed.
    report_status: Mapped[str | None] = mapped_column(String(16))
    report_claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


class FileTokenStats(Base):
    """Token counts of a file under one base model's tokenizer, computed in the background after the first request
    and kept. The row is inserted `pending` as the claim: whoever inserts it computes them."""

    __tablename__ = "file_token_stats"
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # None while pending
    status: Mapped[str] = mapped_column(String(16), default="ready", server_default=text("'ready'"))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


class FineTuningJob(Base):
    __tablename__ = "fine_tuning_jobs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(256))  # as requested: a base model or a fine-tuned model
    base_model: Mapped[str] = mapped_column(String(256))
    # The adapter training starts from, when `model` is a fine-tuned model (or one of its checkpoints).
    start_adapter_prefix: Mapped[str | None] = mapped_column(String(512))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64))
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(32), index=True)
    method: Mapped[dict[str, Any]] = mapped_column(JSON)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Resolved LoRA and trainer settings (the `lora` extension object), fixed at creation.
    training_options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The `evaluation` extension object, fixed at creation (None: jobs created before it, evaluated by default).
    evaluation_options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the report, once the job succeeded
    result_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    estimated_finish: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    job_metadata: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512))
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    # What the worker that runs it must have (`app.core.worker_devices`): CUDA for QLoRA, and room on its GPU.
    needs_cuda: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    gpu_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)  # the estimate, where one was made
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A queued job given back after an outage is sent to a worker again no sooner than this.
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobEvent(Base):
    __tablename__ = "fine_tuning_job_events"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    level: Mapped[str] = mapped_column(String(8), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = _now()


class JobCheckpoint(Base):
    __tablename__ = "fine_tuning_job_checkpoints"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(512))
    storage_prefix: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = _now()


class FineTunedModel(Base):
    __tablename__ = "fine_tuned_models"
    id: Mapped[str] = mapped_column(String(512), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    base_model: Mapped[str] = mapped_column(String(256))
    adapter_prefix: Mapped[str] = mapped_column(String(512))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = _now()


class UsageDay(Base):
    """What an organisation used in one UTC day, per kind of work and model (`app.core.usage`): written in the
    transaction of the work it counts, so a retried transaction never counts twice."""

    __tablename__ = "usage_days"
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # completions, fine_tuning or storage
    model: Mapped[str] = mapped_column(String(512), primary_key=True)  # "" where no model applies (storage)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)  # inference requests, or jobs that succeeded
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    trained_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes added that day, less bytes deleted


class Evaluation(Base):
    """A held-out evaluation asked for through `POST /v1/evaluations`: one model against a baseline on a file."""

    __tablename__ = "evaluations"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(512))
    baseline: Mapped[str] = mapped_column(String(512))
    base_model: Mapped[str] = mapped_column(String(256))  # of both
    file_id: Mapped[str] = mapped_column(String(64))
    max_examples: Mapped[int] = mapped_column(Integer)
    max_tokens: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32), index=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Claimed, leased and retried as jobs are (app.core.lifecycle).
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IdempotencyRecord(Base):
    """The first answer to a create sent with an `Idempotency-Key`, replayed to retries of the same request."""

    __tablename__ = "idempotency_keys"
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(128))
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    # indexed for the sweep that deletes answers older than `idempotency_ttl_hours` (worker.idempotency_sweep)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)


class Upload(Base):
    """OpenAI's Uploads API: a file sent in parts, assembled into a `StoredFile` on completion."""

    __tablename__ = "uploads"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    mime_type: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    file_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UploadPart(Base):
    __tablename__ = "upload_parts"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = _now()


class DashboardSession(Base):
    """A dashboard login: the cookie holds a random token, stored here only as its digest, so the cookie is not the
    API key, logging out ends it, and revoking the key it was opened with ends it too."""

    __tablename__ = "dashboard_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = _now()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BaseModelRecord(Base):
    """A base model added with `loraport base-models add`: its weights (a transformers directory) under
    `weights_prefix` in the object store, and how jobs fine-tune it. Deployment-wide: every organisation sees it."""

    __tablename__ = "base_models"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    revision: Mapped[str] = mapped_column(String(32))  # new at every add: a re-added id never reuses stale caches
    weights_prefix: Mapped[str] = mapped_column(String(512))
    architecture: Mapped[str] = mapped_column(String(128))
    parameters: Mapped[int] = mapped_column(BigInteger)
    context_length: Mapped[int] = mapped_column(Integer)
    chat_template: Mapped[str | None] = mapped_column(Text)  # None: the model's own
    chat_template_source: Mapped[str] = mapped_column(String(16))  # "model", "given" or "default"
    lora_target_modules: Mapped[list[str]] = mapped_column(JSON)
    lora_rank: Mapped[int] = mapped_column(Integer)
    learning_rate: Mapped[float] = mapped_column(Float)
    max_seq_length: Mapped[int] = mapped_column(Integer)
    quantization: Mapped[str | None] = mapped_column(String(16))  # "4bit": jobs train it with QLoRA by default
    created_at: Mapped[datetime] = _now()


class ModelExport(Base):
    """A fine-tuned model (or checkpoint) merged into its base model as a plain transformers checkpoint, made by a
    worker and stored as one tar; one per model, so asking again returns the same export."""

    __tablename__ = "model_exports"
    __table_args__ = (UniqueConstraint("organization_id", "model"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(512))
    base_model: Mapped[str] = mapped_column(String(256))
    # The model's adapter when the export was asked for: deleting the model finds its exports by it.
    adapter_prefix: Mapped[str] = mapped_column(String(512), index=True)
    status: Mapped[str] = mapped_column(String(16))  # queued, running, succeeded or failed
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    storage_key: Mapped[str | None] = mapped_column(String(512))  # the tar, set only once it is wholly uploaded
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = _now()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookEndpoint(Base):
    """Where an organisation's events are sent, signed with `secret` (and, for a day after a rotation that asked for
    it, `previous_secret` too)."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(128))
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class WebhookEvent(Base):
    """One event, written in the transaction that finished its job or evaluation; `body` is the exact JSON every
    delivery and every retry sends."""

    __tablename__ = "webhook_events"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()


class WebhookDelivery(Base):
    """The outbox: one event to one endpoint, pending until a receiver answers 2xx or the retries run out.
    `attempts` lists each try: `{"attempted_at", "status_code", "error"}`."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# Stored bytes are counted by listeners on `StoredFile`'s inserts and deletes: registered wherever the tables are.
import app.core.usage  # noqa: E402, F401
