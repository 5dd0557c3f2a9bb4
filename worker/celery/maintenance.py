"""The maintenance worker: `celery -A worker.celery.maintenance worker --queues maintenance --pool solo --beat`,
one per deployment. Its tasks repair what crashes and broker restarts leave behind, in jobs, evaluations and
storage."""

from app.core.db import transaction
from app.core.log_setup import configure_logging
from app.core.queue import (
    DELIVER_DUE_WEBHOOKS_TASK,
    DELIVER_WEBHOOK_TASK,
    EXPIRE_IDEMPOTENCY_TASK,
    RECONCILE_TASK,
    SWEEP_TASK,
)
from app.core.settings import get_settings
from app.core.storage import store_for
from worker.celery.apps import make_maintenance_celery
from worker.celery.metrics import serve_worker_metrics
from worker.export_sweep import leftovers_of_exports
from worker.idempotency_sweep import expire_idempotency_keys
from worker.reaper import reap_expired_leases, redispatch_lost
from worker.storage_sweep import abort_stale_multipart_uploads, expire_uploads, leftovers_of_ended_jobs
from worker.unrunnable_jobs import tell_unrunnable_jobs
from worker.webhook_delivery import deliver, deliver_due, expire_old_events

configure_logging(get_settings().log_format)
app = make_maintenance_celery(get_settings())
serve_worker_metrics()


@app.task(name=RECONCILE_TASK)
def reconcile_jobs() -> None:
    settings = get_settings()
    reap_expired_leases(settings)
    redispatch_lost(settings)
    tell_unrunnable_jobs(settings)


@app.task(name=SWEEP_TASK)
def sweep_storage() -> None:
    settings = get_settings()
    store = store_for(settings)
    abort_stale_multipart_uploads(store)
    with transaction(settings.require("database_url")) as session:
        expire_uploads(session, store)
        leftovers_of_ended_jobs(session, store)
        leftovers_of_exports(session, store)
        expire_old_events(session)


@app.task(name=EXPIRE_IDEMPOTENCY_TASK)
def expire_idempotency() -> None:
    settings = get_settings()
    with transaction(settings.require("database_url")) as session:
        expire_idempotency_keys(session, settings.idempotency_ttl_hours)


@app.task(name=DELIVER_WEBHOOK_TASK)
def deliver_webhook(delivery_id: str) -> None:
    """The first attempt, sent right after the finish commits; retries are the sweep's."""
    deliver(get_settings(), delivery_id)


@app.task(name=DELIVER_DUE_WEBHOOKS_TASK)
def deliver_due_webhooks() -> None:
    deliver_due(get_settings())
