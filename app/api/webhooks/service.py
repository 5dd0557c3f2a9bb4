"""Managing an organisation's webhook endpoints, and sending one a sample event."""

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.pagination import paginate
from app.api.webhooks.schemas import SecretRotation, WebhookEndpointCreate, WebhookEndpointUpdate
from app.core import ids, webhook_urls
from app.core.errors import InvalidRequest
from app.core.scoped import get_owned
from app.core.settings import Settings
from app.core.tables import Organization, WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.core.webhook_outbox import event_body, live_secrets
from app.core.webhook_signing import new_secret, signed_headers

_OLD_SECRET_KEPT = timedelta(hours=24)
_SAMPLE_OBJECTS = {"fine_tuning.job": "ftjob-test", "eval.run": "eval-test"}


def _checked_url(settings: Settings, url: str) -> str:
    webhook_urls.checked(url, webhook_urls.allowance(settings.webhook_allowed_hosts))
    return url.strip()


def create_endpoint(
    session: Session, settings: Settings, org: Organization, body: WebhookEndpointCreate
) -> WebhookEndpoint:
    row = WebhookEndpoint(
        id=ids.new_id("we"),
        organization_id=org.id,
        name=body.name,
        url=_checked_url(settings, body.url),
        event_types=list(dict.fromkeys(body.event_types)),
        secret=new_secret(),
    )
    session.add(row)
    session.flush()
    session.refresh(row)
    return row


def get_endpoint(session: Session, org: Organization, endpoint_id: str) -> WebhookEndpoint:
    return get_owned(session, WebhookEndpoint, org.id, endpoint_id, "webhook endpoint")


def list_endpoints(
    session: Session, org: Organization, after: str | None, limit: int
) -> tuple[list[WebhookEndpoint], bool]:
    return paginate(session, WebhookEndpoint, [WebhookEndpoint.organization_id == org.id], after, limit)


def update_endpoint(
    session: Session, settings: Settings, org: Organization, endpoint_id: str, body: WebhookEndpointUpdate
) -> WebhookEndpoint:
    """Changes what the body names; `updated_at` moves only when something changed."""
    row = get_endpoint(session, org, endpoint_id)
    changes = {
        "name": body.name,
        "url": _checked_url(settings, body.url) if body.url is not None else None,
        "event_types": list(dict.fromkeys(body.event_types)) if body.event_types is not None else None,
    }
    changed = False
    for field, value in changes.items():
        if value is not None and value != getattr(row, field):
            setattr(row, field, value)
            changed = True
    if changed:
        row.updated_at = datetime.now(UTC)
    session.flush()
    return row


def delete_endpoint(session: Session, org: Organization, endpoint_id: str) -> str:
    """Deletes the endpoint and its pending deliveries."""
    row = get_endpoint(session, org, endpoint_id)
    session.delete(row)
    session.flush()
    return endpoint_id


def rotate_secret(session: Session, org: Organization, endpoint_id: str, body: SecretRotation) -> WebhookEndpoint:
    """A new secret; the old one stops signing at once, or after 24 hours if asked (deliveries carry both)."""
    row = get_endpoint(session, org, endpoint_id)
    now = datetime.now(UTC)
    keep = body.keep_old_secret_active_for_24_hours
    row.previous_secret = row.secret if keep else None
    row.previous_secret_expires_at = now + _OLD_SECRET_KEPT if keep else None
    row.secret = new_secret()
    row.updated_at = now
    session.flush()
    return row


def send_test(settings: Settings, row: WebhookEndpoint, event_type: str) -> int:
    """Sends a sample `event_type` event (its object id is made up) and returns the receiver's status code."""
    destination = webhook_urls.checked(row.url, webhook_urls.allowance(settings.webhook_allowed_hosts))
    event_id = ids.new_id("evt")
    sample = _SAMPLE_OBJECTS[event_type.rsplit(".", 1)[0]]
    body = event_body(event_id, event_type, sample, int(time.time())).encode()
    headers = signed_headers(live_secrets(row), event_id, int(time.time()), body)
    try:
        return webhook_urls.post(destination, body, headers, settings.webhook_timeout_seconds)
    except webhook_urls.DeliveryFailed as error:
        raise InvalidRequest(
            f"The test event could not be delivered to {row.url}: {error}", code="webhook_delivery_failed"
        ) from None


def list_deliveries(
    session: Session, org: Organization, endpoint_id: str, after: str | None, limit: int
) -> tuple[list[tuple[WebhookDelivery, str]], bool]:
    """The endpoint's deliveries, newest first, each with its event's type."""
    row = get_endpoint(session, org, endpoint_id)
    deliveries, has_more = paginate(session, WebhookDelivery, [WebhookDelivery.endpoint_id == row.id], after, limit)
    events = select(WebhookEvent.id, WebhookEvent.type).where(WebhookEvent.id.in_([d.event_id for d in deliveries]))
    types = {event_id: event_type for event_id, event_type in session.execute(events).all()}
    return [(delivery, types[delivery.event_id]) for delivery in deliveries], has_more
