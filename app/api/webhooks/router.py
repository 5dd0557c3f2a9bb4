"""/v1/webhook_endpoints (admin keys only), /v1/webhook_event_types, and the deliveries of an endpoint (extension)."""

from typing import Annotated

from fastapi import APIRouter, Query

from app.api import quotas
from app.api.deps import AdminDep, SessionDep, SettingsDep
from app.api.pagination import ListPage, list_page
from app.api.webhooks import service
from app.api.webhooks.schemas import (
    DeletedWebhookEndpoint,
    SecretRotation,
    WebhookDeliveryPublic,
    WebhookEndpointCreate,
    WebhookEndpointPublic,
    WebhookEndpointTestResult,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
    WebhookEventTypeList,
    WebhookTest,
)
from app.core.webhook_outbox import EVENT_TYPES

router = APIRouter(prefix="/v1", tags=["webhooks"])
Limit = Annotated[int, Query(ge=1, le=100)]
_ENDPOINTS = "/webhook_endpoints"
_ENDPOINT = "/webhook_endpoints/{webhook_endpoint_id}"


@router.post(_ENDPOINTS, response_model=WebhookEndpointWithSecret)
def create_webhook_endpoint(
    body: WebhookEndpointCreate, admin: AdminDep, session: SessionDep, settings: SettingsDep
) -> WebhookEndpointWithSecret:
    """Create an endpoint; its signing secret is shown now and on rotation only."""
    quotas.check_webhook_endpoints(session, admin.org.id, settings)
    return WebhookEndpointWithSecret.of(service.create_endpoint(session, settings, admin.org, body))


@router.get(_ENDPOINTS, response_model=ListPage[WebhookEndpointPublic])
def list_webhook_endpoints(
    admin: AdminDep, session: SessionDep, after: str | None = None, limit: Limit = 20
) -> ListPage[WebhookEndpointPublic]:
    rows, has_more = service.list_endpoints(session, admin.org, after, limit)
    return list_page([WebhookEndpointPublic.of(row) for row in rows], has_more)


@router.get(_ENDPOINT, response_model=WebhookEndpointPublic)
def retrieve_webhook_endpoint(webhook_endpoint_id: str, admin: AdminDep, session: SessionDep) -> WebhookEndpointPublic:
    return WebhookEndpointPublic.of(service.get_endpoint(session, admin.org, webhook_endpoint_id))


@router.post(_ENDPOINT, response_model=WebhookEndpointPublic)
def update_webhook_endpoint(
    webhook_endpoint_id: str, body: WebhookEndpointUpdate, admin: AdminDep, session: SessionDep, settings: SettingsDep
) -> WebhookEndpointPublic:
    """Change the name, URL or (the complete set of) event types."""
    row = service.update_endpoint(session, settings, admin.org, webhook_endpoint_id, body)
    return WebhookEndpointPublic.of(row)


@router.delete(_ENDPOINT, response_model=DeletedWebhookEndpoint)
def delete_webhook_endpoint(webhook_endpoint_id: str, admin: AdminDep, session: SessionDep) -> DeletedWebhookEndpoint:
    """Delete an endpoint; its pending deliveries are dropped."""
    return DeletedWebhookEndpoint(id=service.delete_endpoint(session, admin.org, webhook_endpoint_id))


@router.post(f"{_ENDPOINT}/rotate_secret", response_model=WebhookEndpointWithSecret)
def rotate_webhook_secret(
    webhook_endpoint_id: str, admin: AdminDep, session: SessionDep, body: SecretRotation | None = None
) -> WebhookEndpointWithSecret:
    """A new signing secret; the old one signs too for 24 hours if `keep_old_secret_active_for_24_hours`."""
    row = service.rotate_secret(session, admin.org, webhook_endpoint_id, body or SecretRotation())
    return WebhookEndpointWithSecret.of(row)


@router.post(f"{_ENDPOINT}/test", response_model=WebhookEndpointTestResult)
def test_webhook_endpoint(
    webhook_endpoint_id: str, body: WebhookTest, admin: AdminDep, session: SessionDep, settings: SettingsDep
) -> WebhookEndpointTestResult:
    """Send a sample event now, signed as real ones are, and report the receiver's status code."""
    row = service.get_endpoint(session, admin.org, webhook_endpoint_id)
    status_code = service.send_test(settings, row, body.event_type)
    return WebhookEndpointTestResult(webhook_endpoint_id=row.id, event_type=body.event_type, status_code=status_code)


@router.get(f"{_ENDPOINT}/deliveries", response_model=ListPage[WebhookDeliveryPublic])
def list_webhook_deliveries(
    webhook_endpoint_id: str, admin: AdminDep, session: SessionDep, after: str | None = None, limit: Limit = 20
) -> ListPage[WebhookDeliveryPublic]:
    """The endpoint's deliveries, newest first, each with every attempt's time and status code (extension)."""
    rows, has_more = service.list_deliveries(session, admin.org, webhook_endpoint_id, after, limit)
    return list_page([WebhookDeliveryPublic.of(row, event_type) for row, event_type in rows], has_more)


@router.get("/webhook_event_types", response_model=WebhookEventTypeList)
def list_webhook_event_types(admin: AdminDep) -> WebhookEventTypeList:
    """The event types this deployment sends."""
    return WebhookEventTypeList(data=list(EVENT_TYPES))
