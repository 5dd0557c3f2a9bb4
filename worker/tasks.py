"""Celery tasks: thin wrappers that add acknowledgement behaviour around plain functions."""

from functools import lru_cache

import torch
from celery import shared_task
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown

from app.base_models.from_settings import registry_from_settings
from app.base_models.registry import BaseModelRegistry
from app.config import get_settings
from app.devices import compute_device
from app.worker_devices import report, training_gpus, withdraw
from worker.celery_app import EVALUATE_TASK, TRAIN_TASK
from worker.evaluation_runner import run_evaluation
from worker.job_runner import run_job


@lru_cache
def _registry() -> BaseModelRegistry:
    return registry_from_settings(get_settings())


@worker_init.connect
@worker_process_init.connect
def _limit_threads(**_: object) -> None:
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


@shared_task(name=TRAIN_TASK)
def train_job(job_id: str) -> None:
    run_job(get_settings(), _registry(), job_id)


@shared_task(name=EVALUATE_TASK)
def evaluate(evaluation_id: str) -> None:
    run_evaluation(get_settings(), _registry(), evaluation_id)
