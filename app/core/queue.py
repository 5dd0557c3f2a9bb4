"""The broker queue both sides meet in: task and queue names, and the `enqueue_*` functions the API and the reaper
call. Messages carry ids only and are sent after the rows they name are committed; a worker reloads the state from
PostgreSQL, so a duplicate or late message does nothing. Importing this loads no ML library."""

import uuid
from collections.abc import Callable
from functools import lru_cache

import structlog
from celery import Celery
from sqlalchemy.orm import Session

from app.core.db import after_commit
from app.core.settings import Settings

log = structlog.get_logger()

TRAINING_QUEUE = "training"
# Doorbells of jobs only CUDA workers can run (QLoRA): CUDA workers consume both queues, CPU workers only the first.
CUDA_TRAINING_QUEUE = "training.cuda"
MAINTENANCE_QUEUE = "maintenance"
TRAIN_TASK = "loraport.train_job"
EVALUATE_TASK = "loraport.evaluate"  # on the training queue: its workers hold the models
# On the training queue too: a merge loads the whole base model, which the light maintenance worker must never do.
EXPORT_TASK = "loraport.export_model"
RECONCILE_TASK = "loraport.reconcile_jobs"
SWEEP_TASK = "loraport.sweep_storage"
EXPIRE_IDEMPOTENCY_TASK = "loraport.expire_idempotency_keys"
# On the maintenance queue: a delivery is a short HTTP request, never behind a training job.
DELIVER_WEBHOOK_TASK = "loraport.deliver_webhook"
DELIVER_DUE_WEBHOOKS_TASK = "loraport.deliver_due_webhooks"
_TRAIN_TASK_ID_PREFIX = "train-"
_EVALUATE_TASK_ID_PREFIX = "evaluate-"
_EXPORT_TASK_ID_PREFIX = "export-"


@lru_cache
def producer(settings: Settings) -> Celery:
    """A Celery app that only sends (and purges, in tests); the workers build their own with the consuming settings."""
    app = Celery("loraport", broker=settings.require("redis_url"), set_as_current=False)
    # `control.purge()` empties only the default queue (Celery 5.7): make it the one the messages are in.
    app.conf.task_default_queue = TRAINING_QUEUE
    return app


def enqueue_training(settings: Settings, job_id: str) -> None:
    _send_training(settings, job_id, TRAINING_QUEUE)


def enqueue_cuda_training(settings: Settings, job_id: str) -> None:
    _send_training(settings, job_id, CUDA_TRAINING_QUEUE)


def training_sender(needs_cuda: bool) -> Callable[[Settings, str], None]:
    """How a job's doorbell is sent: to the queue of the workers that can run it."""
    return enqueue_cuda_training if needs_cuda else enqueue_training


def _send_training(settings: Settings, job_id: str, queue: str) -> None:
    # The job id inside the task id lets the reaper see which jobs still have a message in the broker.
    task_id = f"{_TRAIN_TASK_ID_PREFIX}{job_id}.{uuid.uuid4().hex[:12]}"
    producer(settings).send_task(TRAIN_TASK, args=[job_id], queue=queue, task_id=task_id)


def enqueue_evaluation(settings: Settings, evaluation_id: str) -> None:
    task_id = f"{_EVALUATE_TASK_ID_PREFIX}{evaluation_id}.{uuid.uuid4().hex[:12]}"
    producer(settings).send_task(EVALUATE_TASK, args=[evaluation_id], queue=TRAINING_QUEUE, task_id=task_id)


def enqueue_export(settings: Settings, export_id: str) -> None:
    task_id = f"{_EXPORT_TASK_ID_PREFIX}{export_id}.{uuid.uuid4().hex[:12]}"
    producer(settings).send_task(EXPORT_TASK, args=[export_id], queue=TRAINING_QUEUE, task_id=task_id)


def enqueue_webhook_delivery(settings: Settings, delivery_id: str) -> None:
    producer(settings).send_task(DELIVER_WEBHOOK_TASK, args=[delivery_id], queue=MAINTENANCE_QUEUE)


def enqueue_after_commit(
    session: Session, settings: Settings, enqueue: Callable[[Settings, str], None], row_id: str
) -> None:
    """`enqueue(settings, row_id)` once the row is committed. A broker that is down then loses nothing: the row is
    queued in PostgreSQL, and the reaper sends queued work that has no message in the broker."""

    def send() -> None:
        try:
            enqueue(settings, row_id)
        except Exception as error:
            log.warning("queue.send_failed", id=row_id, error=str(error))

    after_commit(session, send)


def job_id_of_task(task_id: str) -> str | None:
    """The job a training task id was made for; None for ids `enqueue_training` did not make."""
    return _id_of_task(task_id, _TRAIN_TASK_ID_PREFIX)


def evaluation_id_of_task(task_id: str) -> str | None:
    """The evaluation an evaluation task id was made for; None for ids `enqueue_evaluation` did not make."""
    return _id_of_task(task_id, _EVALUATE_TASK_ID_PREFIX)


def export_id_of_task(task_id: str) -> str | None:
    """The export an export task id was made for; None for ids `enqueue_export` did not make."""
    return _id_of_task(task_id, _EXPORT_TASK_ID_PREFIX)


def _id_of_task(task_id: str, prefix: str) -> str | None:
    if not task_id.startswith(prefix) or "." not in task_id:
        return None
    return task_id.removeprefix(prefix).rsplit(".", 1)[0]
