"""The maintenance worker's tasks: repair what crashes and broker restarts leave behind, in jobs and in storage."""

from celery import shared_task

from app.config import get_settings
from app.db import transaction
from app.storage import store_for
from worker.celery_app import RECONCILE_TASK, SWEEP_TASK
from worker.reaper import reap_expired_leases, redispatch_lost, resend_unqueued
from worker.storage_sweep import abort_stale_multipart_uploads, expire_uploads, leftovers_of_ended_jobs


@shared_task(name=RECONCILE_TASK)
def reconcile_jobs() -> None:
    settings = get_settings()
    reap_expired_leases(settings)
    resend_unqueued(settings)
    redispatch_lost(settings)


@shared_task(name=SWEEP_TASK)
def sweep_storage() -> None:
    settings = get_settings()
    store = store_for(settings)
    abort_stale_multipart_uploads(store)
    with transaction(settings.require("database_url")) as session:
        expire_uploads(session, store)
        leftovers_of_ended_jobs(session, store)
