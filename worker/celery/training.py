"""The training worker: `celery -A worker.celery.training worker --queues training --pool solo`, one per GPU (or
per CPU host): training, evaluations and merged-model exports, the work that loads a base model. Its tasks are
thin wrappers around plain functions that tests call directly."""

from functools import lru_cache

import torch
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown

from app.core.log_setup import configure_logging
from app.core.niceness import yield_cpu
from app.core.queue import EVALUATE_TASK, EXPORT_TASK, TRAIN_TASK
from app.core.settings import get_settings
from app.core.worker_devices import report, withdraw
from app.ml.base_models.from_settings import registry_from_settings
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.devices import compute_device, training_gpus
from worker.celery.apps import make_training_celery
from worker.celery.metrics import serve_worker_metrics
from worker.evaluation_runner import run_evaluation
from worker.model_export import run_export
from worker.next_job import run_next_job

configure_logging(get_settings().log_format)
app = make_training_celery(get_settings())
serve_worker_metrics()


@lru_cache
def _registry() -> BaseModelRegistry:
    return registry_from_settings(get_settings())


@worker_init.connect
@worker_process_init.connect
def _limit_threads(**_: object) -> None:
    yield_cpu(get_settings().background_niceness)  # before torch starts its threads, which inherit it
    threads = get_settings().torch_threads
    if threads:
        torch.set_num_threads(threads)


@worker_ready.connect
def _report_devices(sender: object, **_: object) -> None:
    """Tells the API what this worker trains on, so that jobs no worker could run are refused when created."""
    settings = get_settings()
    report(settings.require("redis_url"), sender.hostname, training_gpus(compute_device(settings)))  # type: ignore[attr-defined]


@worker_shutdown.connect
def _withdraw_devices(sender: object, **_: object) -> None:
    withdraw(get_settings().require("redis_url"), sender.hostname)  # type: ignore[attr-defined]


@app.task(name=TRAIN_TASK)
def train_job(job_id: str) -> None:
    """`job_id` is a doorbell: the worker runs the next job in fair order, which may be another one."""
    run_next_job(get_settings(), _registry(), job_id)


@app.task(name=EVALUATE_TASK)
def evaluate(evaluation_id: str) -> None:
    run_evaluation(get_settings(), _registry(), evaluation_id)


@app.task(name=EXPORT_TASK)
def export_model(export_id: str) -> None:
    run_export(get_settings(), _registry(), export_id)
