"""The training worker: `celery -A worker.celery.training worker --queues training --pool solo`, one per GPU (or
per CPU host): training, evaluations and merged-model exports, the work that loads a base model. Its tasks are
thin wrappers around plain functions that tests call directly."""

import threading
from functools import lru_cache

import redis
import torch
from celery import Task
from celery.signals import celeryd_after_setup, worker_init, worker_process_init, worker_ready, worker_shutdown
from celery.worker import WorkController
from celery.worker.consumer import Consumer

from app.core.log_setup import configure_logging
from app.core.niceness import yield_cpu
from app.core.queue import CUDA_TRAINING_QUEUE, EVALUATE_TASK, EXPORT_TASK, TRAIN_TASK
from app.core.settings import get_settings
from app.core.worker_devices import RENEW_SECONDS, Capabilities, report, withdraw
from app.ml.base_models.from_settings import registry_from_settings
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.devices import worker_capabilities
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


@lru_cache
def _capabilities() -> Capabilities:
    return worker_capabilities(get_settings())


@celeryd_after_setup.connect
def _consume_cuda_doorbells(sender: str, instance: WorkController, **_: object) -> None:
    """A CUDA worker also takes the doorbells of jobs only CUDA workers can run (QLoRA)."""
    if _capabilities().quantization:
        instance.app.amqp.queues.select_add(CUDA_TRAINING_QUEUE)


@worker_ready.connect
def _declare_capabilities(sender: Consumer, **_: object) -> None:
    """Declares what this worker can run, renewed while it lives: the API and the reaper tell a job's owner when no
    live worker can run it."""
    settings, name = get_settings(), sender.hostname
    report(settings.require("redis_url"), name, _capabilities())

    def renew() -> None:
        while not _stopping.wait(RENEW_SECONDS):
            try:
                report(settings.require("redis_url"), name, _capabilities())
            except redis.RedisError:
                continue  # Redis is down: the next renewal tries again

    threading.Thread(target=renew, name="capabilities", daemon=True).start()


@worker_shutdown.connect
def _withdraw_capabilities(sender: Consumer, **_: object) -> None:
    _stopping.set()
    withdraw(get_settings().require("redis_url"), sender.hostname)


_stopping = threading.Event()


@app.task(name=TRAIN_TASK, bind=True)
def train_job(self: Task, job_id: str) -> None:
    """`job_id` is a doorbell: the worker runs the next job in fair order that it can run, which may be another."""
    run_next_job(get_settings(), _registry(), job_id, _capabilities(), self.request.hostname)


@app.task(name=EVALUATE_TASK)
def evaluate(evaluation_id: str) -> None:
    run_evaluation(get_settings(), _registry(), evaluation_id)


@app.task(name=EXPORT_TASK)
def export_model(export_id: str) -> None:
    run_export(get_settings(), _registry(), export_id)
