"""Enqueueing an evaluation for a worker that holds the models: its id only, after its row is committed."""

from app.config import Settings
from worker.celery_app import EVALUATE_TASK, TRAINING_QUEUE, celery_for


def enqueue_evaluation(settings: Settings, evaluation_id: str) -> None:
    celery_for(settings).send_task(EVALUATE_TASK, args=[evaluation_id], queue=TRAINING_QUEUE)
