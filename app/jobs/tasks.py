"""Enqueueing training: ids only, always after the job row is committed."""

import uuid

from app.config import Settings
from worker.celery_app import TRAIN_TASK, TRAINING_QUEUE, celery_for

_TASK_ID_PREFIX = "train-"


def enqueue_training(settings: Settings, job_id: str) -> None:
    # The job id inside the task id lets the reaper see which jobs still have a message in the broker.
    task_id = f"{_TASK_ID_PREFIX}{job_id}.{uuid.uuid4().hex[:12]}"
    celery_for(settings).send_task(TRAIN_TASK, args=[job_id], queue=TRAINING_QUEUE, task_id=task_id)


def job_id_of_task(task_id: str) -> str | None:
    """The job a training task id was made for; None for ids `enqueue_training` did not make."""
    if not task_id.startswith(_TASK_ID_PREFIX) or "." not in task_id:
        return None
    return task_id.removeprefix(_TASK_ID_PREFIX).rsplit(".", 1)[0]
