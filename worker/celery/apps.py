"""How the workers consume: each non-default Celery setting with its reason. Task and queue names live in
`app.core.queue`, which the API sends with."""

from celery import Celery

from app.core.queue import (
    DELIVER_DUE_WEBHOOKS_TASK,
    EXPIRE_IDEMPOTENCY_TASK,
    MAINTENANCE_QUEUE,
    RECONCILE_TASK,
    SWEEP_TASK,
    TRAINING_QUEUE,
)
from app.core.settings import Settings

_SWEEP_INTERVAL_S = 900  # what it clears costs space, not correctness: a quarter of an hour is soon enough
_IDEMPOTENCY_INTERVAL_S = 3600  # answers live 24 h: an hour late is 4 % longer
# Redis re-delivers an unacknowledged message after this long (kombu#337); PostgreSQL leases guard
# against double runs anyway, but a long timeout keeps re-deliveries of healthy jobs rare.
_VISIBILITY_TIMEOUT_S = 12 * 3600
_HARD_LIMIT_GRACE_S = 600  # time to record the failure and delete the job's leftovers after the soft limit


def make_training_celery(settings: Settings) -> Celery:
    app = Celery("loraport", broker=settings.require("redis_url"))
    app.conf.update(
        task_default_queue=TRAINING_QUEUE,
        # Acknowledge after the task ends, so a worker killed mid-job leaves the message to be re-delivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One training job at a time per worker process: never reserve a second one while busy.
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options={"visibility_timeout": _VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        # A runaway job must not hold a worker for ever: the soft limit raises SoftTimeLimitExceeded in the task,
        # which fails the job saying so; the hard one, a grace period later, kills a task that ignored it.
        # (The `solo` pool enforces neither: the job's own stop checks apply the same limit there.)
        task_soft_time_limit=settings.job_time_limit_seconds,
        task_time_limit=settings.job_time_limit_seconds + _HARD_LIMIT_GRACE_S,
    )
    return app


def make_maintenance_celery(settings: Settings) -> Celery:
    """A light app for the reaper, run by its own worker with an embedded beat, so that workers busy training
    never delay it and it loads no ML libraries."""
    app = Celery("loraport-maintenance", broker=settings.require("redis_url"))
    interval = settings.reconcile_interval_seconds
    app.conf.update(
        task_default_queue=MAINTENANCE_QUEUE,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        # A run that could not start within one interval is dropped: the next one does the same work.
        beat_schedule={
            "reconcile-jobs": {"task": RECONCILE_TASK, "schedule": interval, "options": {"expires": interval}},
            # Webhook retries, and first attempts whose message was lost: as often as the reaper looks for lost work.
            "deliver-due-webhooks": {
                "task": DELIVER_DUE_WEBHOOKS_TASK,
                "schedule": interval,
                "options": {"expires": interval},
            },
            "sweep-storage": {
                "task": SWEEP_TASK,
                "schedule": _SWEEP_INTERVAL_S,
                "options": {"expires": _SWEEP_INTERVAL_S},
            },
            "expire-idempotency-keys": {
                "task": EXPIRE_IDEMPOTENCY_TASK,
                "schedule": _IDEMPOTENCY_INTERVAL_S,
                "options": {"expires": _IDEMPOTENCY_INTERVAL_S},
            },
        },
    )
    return app
