"""The maintenance worker's one task: repair what crashes and broker restarts leave behind."""

from celery import shared_task

from app.config import get_settings
from worker.celery_app import RECONCILE_TASK
from worker.reaper import reap_expired_leases, redispatch_lost, resend_unqueued


@shared_task(name=RECONCILE_TASK)
def reconcile_jobs() -> None:
    settings = get_settings()
    reap_expired_leases(settings)
    resend_unqueued(settings)
    redispatch_lost(settings)
