"""Enqueueing training: ids only, always after the job row is committed."""

from app.config import Settings
from worker.celery_app import TRAIN_TASK, TRAINING_QUEUE, celery_for


def enqueue_training(settings: Settings, job_id: str) -> None:
    celery_for(settings).send_task(TRAIN_TASK, args=[job_id], queue=TRAINING_QUEUE)
