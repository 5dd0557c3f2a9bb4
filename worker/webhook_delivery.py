"""Sends the webhook outbox (`app.core.webhook_outbox`): one attempt per call, retried with exponential backoff
until a receiver answers 2xx, or `webhook_retry_hours` after the event it is marked failed.

An attempt first claims its delivery by pushing `next_attempt_at` past the attempt's longest run, so two workers (a
message and the sweep) never send one delivery at once, and a worker that dies mid-attempt leaves it due again a
little later. Every attempt sends the same event id and body; only the timestamp and its signature are new, as
Standard Webhooks receivers expect (they refuse a timestamp older than five minutes)."""

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.core import webhook_urls
from app.core.db import transaction
from app.core.settings import Settings
from app.core.tables import WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.core.webhook_outbox import DELIVERED, FAILED, PENDING, live_secrets
from app.core.webhook_signing import signed_headers

log = structlog.get_logger()
_MAX_BACKOFF_S = 3600  # a receiver down for a day is tried every hour, not every few days
# How long a claimed delivery is held: httpx's timeout bounds connect, write and each read apart, so an attempt
# may take a few timeouts; a worker that died mid-attempt leaves the delivery due again after this.
_CLAIM_TIMEOUTS, _CLAIM_GRACE_S = 4, 60
_SWEEP_BATCH = 100
EVENTS_KEPT_DAYS = 30  # events and their deliveries' attempts stay listed this long, then go


@dataclass(frozen=True)
class _Claimed:
    event_id: str
    body: bytes
    url: str
    secrets: list[str]
    created_at: datetime
    attempts: list[dict]


def backoff_seconds(settings: Settings, attempts_made: int) -> float:
    """The wait after the `attempts_made`-th failed attempt: the first retry's, doubled each time, at most an hour."""
    first = settings.webhook_first_retry_seconds
    return float(min(first * 2 ** (attempts_made - 1), max(first, _MAX_BACKOFF_S)))


def deliver(settings: Settings, delivery_id: str) -> str | None:
    """One attempt at a due delivery: its status after it, or None when it was not due (delivered, failed, being
    sent by another worker, or waiting for its next retry)."""
    url = settings.require("database_url")
    claimed = _claim(url, delivery_id, _CLAIM_TIMEOUTS * settings.webhook_timeout_seconds + _CLAIM_GRACE_S)
    if claimed is None:
        return None
    status_code, error = _attempt(settings, claimed)
    now = datetime.now(UTC)
    attempts = [*claimed.attempts, {"attempted_at": int(now.timestamp()), "status_code": status_code, "error": error}]
    values: dict[str, object] = {"attempts": attempts}
    if status_code is not None and 200 <= status_code < 300:
        values |= {"status": DELIVERED, "next_attempt_at": None, "finished_at": now}
    elif now >= claimed.created_at + timedelta(hours=settings.webhook_retry_hours):
        values |= {"status": FAILED, "next_attempt_at": None, "finished_at": now}
    else:
        values["next_attempt_at"] = now + timedelta(seconds=backoff_seconds(settings, len(attempts)))
    with transaction(url) as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == PENDING)
            .values(**values)
        )
    status = str(values.get("status", PENDING))
    log.info("webhooks.attempt", delivery_id=delivery_id, status_code=status_code, error=error, status=status)
    return status


def deliver_due(settings: Settings) -> int:
    """An attempt at every delivery now due (the sweep: retries, and first attempts whose message was lost), for
    about half a reconcile interval at most, so that receivers that time out cannot keep the maintenance worker
    (one task at a time) from its reaper; the next sweep takes the rest. How many were attempted."""
    budget_s = max(settings.reconcile_interval_seconds / 2, settings.webhook_timeout_seconds)
    deadline = time.monotonic() + budget_s
    with transaction(settings.require("database_url")) as session:
        due = session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= func.now())
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(_SWEEP_BATCH)
        ).all()
    attempted = 0
    for delivery_id in due:
        if time.monotonic() > deadline:
            break
        attempted += deliver(settings, delivery_id) is not None
    return attempted


def _claim(url: str, delivery_id: str, hold_s: float) -> _Claimed | None:
    with transaction(url) as session:
        claimed = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == PENDING,
                WebhookDelivery.next_attempt_at <= func.now(),
            )
            .values(next_attempt_at=func.now() + timedelta(seconds=hold_s))
            .returning(WebhookDelivery.event_id, WebhookDelivery.endpoint_id, WebhookDelivery.attempts)
        ).first()
        if claimed is None:
            return None
        event = session.get_one(WebhookEvent, claimed.event_id)
        endpoint = session.get_one(WebhookEndpoint, claimed.endpoint_id)
        return _Claimed(
            event_id=event.id,
            body=event.body.encode(),
            url=endpoint.url,
            secrets=live_secrets(endpoint),
            created_at=event.created_at,
            attempts=list(claimed.attempts),
        )


def _attempt(settings: Settings, claimed: _Claimed) -> tuple[int | None, str | None]:
    """(status code, None) when the receiver answered, else (None, why not)."""
    try:
        # Checked again now: the URL was safe when saved, but its name may resolve elsewhere today.
        destination = webhook_urls.checked(claimed.url, webhook_urls.allowance(settings.webhook_allowed_hosts))
        headers = signed_headers(claimed.secrets, claimed.event_id, int(time.time()), claimed.body)
        status_code = webhook_urls.post(destination, claimed.body, headers, settings.webhook_timeout_seconds)
    except webhook_urls.UnsafeUrl as error:
        return None, f"refused: {error.message}"
    except webhook_urls.DeliveryFailed as error:
        return None, str(error)
    return status_code, None if 200 <= status_code < 300 else f"the receiver answered {status_code}"


def expire_old_events(session: Session) -> int:
    """Deletes events (and their deliveries) older than `EVENTS_KEPT_DAYS` with no delivery still pending; how many."""
    pending = select(WebhookDelivery.id).where(
        WebhookDelivery.event_id == WebhookEvent.id, WebhookDelivery.status == PENDING
    )
    old = delete(WebhookEvent).where(
        WebhookEvent.created_at < func.now() - timedelta(days=EVENTS_KEPT_DAYS), ~pending.exists()
    )
    return len(session.execute(old.returning(WebhookEvent.id)).all())
