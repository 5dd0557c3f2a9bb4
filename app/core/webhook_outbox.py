"""The webhook outbox: an event for each finished job or evaluation, written in the transaction that finished it,
with a delivery row for every endpoint of its organisation that subscribes to it.

A finish that commits has its deliveries stored with it, and one that rolls back has none; the maintenance worker
sends them (a message after commit for speed, and a sweep for those whose message was lost), retrying with
backoff (`worker.webhook_delivery`)."""

import json
import time
from datetime import UTC, datetime
from functools import partial

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core import ids
from app.core.db import after_commit
from app.core.queue import enqueue_webhook_delivery
from app.core.settings import Settings, get_settings
from app.core.tables import WebhookDelivery, WebhookEndpoint, WebhookEvent

log = structlog.get_logger()

JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED = (
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
)
# OpenAI spells it "canceled" for eval runs and "cancelled" for fine-tuning jobs.
EVAL_SUCCEEDED, EVAL_FAILED, EVAL_CANCELED = "eval.run.succeeded", "eval.run.failed", "eval.run.canceled"
EVENT_TYPES = (JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED, EVAL_SUCCEEDED, EVAL_FAILED, EVAL_CANCELED)
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
_SETTINGS = "loraport.settings"


def event_body(event_id: str, event_type: str, object_id: str, created_at: int) -> str:
    """The event as OpenAI sends it (`openai.types.webhooks.*WebhookEvent`)."""
    event = {"id": event_id, "object": "event", "created_at": created_at, "type": event_type, "data": {"id": object_id}}
    return json.dumps(event, separators=(",", ":"))


def record(session: Session, organization_id: str, event_type: str, object_id: str) -> list[str]:
    """Stores the event and its deliveries in `session`'s transaction; the ids of the deliveries."""
    endpoints = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.event_types).where(
            WebhookEndpoint.organization_id == organization_id
        )
    ).all()
    subscribed = [endpoint.id for endpoint in endpoints if event_type in endpoint.event_types]
    if not subscribed:
        return []
    event_id = ids.new_id("evt")
    body = event_body(event_id, event_type, object_id, int(time.time()))
    session.add(WebhookEvent(id=event_id, organization_id=organization_id, type=event_type, body=body))
    session.flush()  # the event before its deliveries, which name it (no relationship orders them)
    deliveries = [
        WebhookDelivery(
            id=ids.new_id("whdel"),
            event_id=event_id,
            endpoint_id=endpoint_id,
            status=PENDING,
            attempts=[],
            next_attempt_at=func.now(),
        )
        for endpoint_id in subscribed
    ]
    session.add_all(deliveries)
    delivery_ids = [delivery.id for delivery in deliveries]
    after_commit(session, partial(_send, session.info.get(_SETTINGS), delivery_ids))
    return delivery_ids


def use_settings(session: Session, settings: Settings) -> None:
    """The settings whose broker the messages of `session`'s deliveries go to; without, the process's own
    (`get_settings()`, what a worker runs with)."""
    session.info[_SETTINGS] = settings


def _send(settings: Settings | None, delivery_ids: list[str]) -> None:
    """A message per delivery, so that it goes at once; without a broker the sweep sends it within a minute."""
    settings = settings or get_settings()
    if settings.redis_url is None:
        return
    for delivery_id in delivery_ids:
        try:
            enqueue_webhook_delivery(settings, delivery_id)
        except Exception as error:
            log.warning("webhooks.send_failed", delivery_id=delivery_id, error=str(error))


def live_secrets(endpoint: WebhookEndpoint) -> list[str]:
    """The endpoint's secret, and the one it replaced while that is kept alive after a rotation."""
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires and expires > datetime.now(UTC):
        return [endpoint.secret, endpoint.previous_secret]
    return [endpoint.secret]
