"""Webhook endpoint requests and responses, in the shapes of `openai.types.webhooks`."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.tables import WebhookDelivery, WebhookEndpoint
from app.core.timestamps import unix
from app.core.webhook_signing import hint

# The events Loraport sends: those of fine-tuning jobs and of evaluations (`POST /v1/evaluations`, as eval runs).
EventType = Literal[
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
    "eval.run.succeeded",
    "eval.run.failed",
    "eval.run.canceled",
]
Name = Field(min_length=1, max_length=256, description="a human-readable name")
Url = Field(min_length=1, max_length=2048, description="the https URL that receives deliveries")


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Name
    url: str = Url
    event_types: list[EventType] = Field(min_length=1, description="the events sent to this endpoint")


class WebhookEndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=256)
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    event_types: list[EventType] | None = Field(default=None, min_length=1, description="the complete new set")


class SecretRotation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep_old_secret_active_for_24_hours: bool = False


class WebhookTest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_type: EventType


class WebhookEndpointPublic(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    updated_at: int | None
    name: str
    url: str
    event_types: list[str]
    signing_secret_hint: str

    @classmethod
    def of(cls, row: WebhookEndpoint) -> "WebhookEndpointPublic":
        return cls(**_fields(row))


class WebhookEndpointWithSecret(WebhookEndpointPublic):
    signing_secret: str = Field(description="returned only when the endpoint is created or its secret rotated")

    @classmethod
    def of(cls, row: WebhookEndpoint) -> "WebhookEndpointWithSecret":
        return cls(**_fields(row), signing_secret=row.secret)


def _fields(row: WebhookEndpoint) -> dict:
    return {
        "id": row.id,
        "created_at": unix(row.created_at) or 0,
        "updated_at": unix(row.updated_at),
        "name": row.name,
        "url": row.url,
        "event_types": list(row.event_types),
        "signing_secret_hint": hint(row.secret),
    }


class DeletedWebhookEndpoint(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class WebhookEndpointTestResult(BaseModel):
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    webhook_endpoint_id: str
    event_type: str
    status_code: int
    success: Literal[True] = True


class WebhookEventTypeList(BaseModel):
    object: Literal["list"] = "list"
    data: list[str]


class DeliveryAttempt(BaseModel):
    attempted_at: int
    status_code: int | None = Field(description="the receiver's answer; null when it could not be reached")
    error: str | None


class WebhookDeliveryPublic(BaseModel):
    """One event sent to one endpoint (extension): pending until a 2xx answer, failed once retries ran out."""

    id: str
    object: Literal["webhook_endpoint.delivery"] = "webhook_endpoint.delivery"
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    created_at: int
    next_attempt_at: int | None
    finished_at: int | None
    attempts: list[DeliveryAttempt]

    @classmethod
    def of(cls, row: WebhookDelivery, event_type: str) -> "WebhookDeliveryPublic":
        return cls(
            id=row.id,
            event_id=row.event_id,
            event_type=event_type,
            status=row.status,
            created_at=unix(row.created_at) or 0,
            next_attempt_at=unix(row.next_attempt_at),
            finished_at=unix(row.finished_at),
            attempts=[DeliveryAttempt(**attempt) for attempt in row.attempts],
        )
