"""One evaluation asked for through `POST /v1/evaluations`, from queued to a report or an error.

A plain function that tests call directly; the Celery task only wraps `run_evaluation`. It has a job's lifecycle: a
guarded claim takes an attempt, a lease kept alive while it runs lets the reaper re-queue it when its worker dies,
a cancel stops it between answers, and an outage gives it back to the queue. Another attempt runs it again from
the start: greedy answers make its report the same.
"""

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select

from app.core.db import transaction
from app.core.lifecycle import EVALUATIONS, Status
from app.core.metrics import EVALUATION_SECONDS, OUTAGES_SURVIVED, WORK_FINISHED
from app.core.outages import outage_tolerated, unavailable_service
from app.core.settings import Settings
from app.core.storage import ObjectStore, store_for
from app.core.tables import Evaluation, Organization, StoredFile
from app.ml.adapter_manifest import verified_fetch
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.devices import compute_device
from app.ml.models import UnknownModel, resolve
from app.ml.scoring.report import Sides, evaluation_report, held_out_examples
from app.ml.training_options import resolve_training_options
from app.serving.answers import Stopped
from worker.datasets import stream_examples
from worker.failures import TaskFailed, internal_error, time_limit_error
from worker.held_out import answer_and_measure
from worker.lease import LeaseKeeper
from worker.progress import CancelCheck, time_limit
from worker.training.trainer import TrainingConfig

log = structlog.get_logger()
COMPARISON = Sides("baseline", "model", "baseline_answer", "model_answer", "baseline", "model")
MEASURING_BATCH = 8  # held-out examples per teacher-forced forward


@dataclass(frozen=True)
class _Request:
    """What the evaluation row asks for, with each model resolved to its adapter (None: the base model)."""

    base_model: str
    file_key: str
    max_examples: int
    max_tokens: int
    adapters: dict[str, str | None]  # "model" and "baseline" → adapter prefix


def run_evaluation(settings: Settings, registry: BaseModelRegistry, evaluation_id: str) -> None:
    url = settings.require("database_url")
    with transaction(url) as session:
        attempt = EVALUATIONS.claim(session, evaluation_id, settings.job_lease_seconds)
    if attempt is None:  # finished, cancelled, or another worker's already: a duplicate or late message
        log.info("evaluations.skip", evaluation_id=evaluation_id)
        return
    try:
        with LeaseKeeper(url, EVALUATIONS, evaluation_id, attempt, settings.job_lease_seconds):
            stop = CancelCheck(url, EVALUATIONS, evaluation_id, attempt, time_limit(settings)).should_stop
            with EVALUATION_SECONDS.labels("evaluation").time():
                report = _evaluate(settings, registry, _request(settings, registry, evaluation_id), stop)
    except Stopped:
        log.info("evaluations.stopped", evaluation_id=evaluation_id, attempt=attempt)
    except TaskFailed as failure:
        _finish(url, evaluation_id, attempt, Status.FAILED, error=failure.error)
    except SoftTimeLimitExceeded:
        log.warning("evaluations.time_limit", evaluation_id=evaluation_id, limit_s=settings.job_time_limit_seconds)
        _finish(url, evaluation_id, attempt, Status.FAILED, error=time_limit_error(settings, "Evaluation"))
    except Exception as error:
        if (service := unavailable_service(error)) is not None:
            log.warning("evaluations.outage", evaluation_id=evaluation_id, service=service, exc_info=True)
            OUTAGES_SURVIVED.labels(service).inc()
            _give_back_or_fail(settings, evaluation_id, attempt, service)
            return
        log.exception("evaluations.failed", evaluation_id=evaluation_id)
        _finish(url, evaluation_id, attempt, Status.FAILED, error=internal_error("Evaluation", error))
        raise
    else:
        _finish(url, evaluation_id, attempt, Status.SUCCEEDED, report=report)


def _give_back_or_fail(settings: Settings, evaluation_id: str, attempt: int, service: str) -> None:
    """An outage is not the evaluation's fault: it goes back to the queue, to run again `outage_retry_seconds` later;
    its last attempt fails, naming the service (the error's text, in the log, names hosts tenants need not see).
    With the database down too, the lease runs out and the reaper re-queues it."""
    with outage_tolerated("evaluations.outage.unrecorded", evaluation_id=evaluation_id):
        if attempt < settings.max_job_attempts:
            retry_at = datetime.now(UTC) + timedelta(seconds=settings.outage_retry_seconds)
            with transaction(settings.require("database_url")) as session:
                EVALUATIONS.give_back(session, evaluation_id, retry_at, attempt)
            return
        message = (
            f"The evaluation stopped {attempt} times because {service} was unavailable; check that the "
            "workers can reach it, then create the evaluation again"
        )
        error_body = {"code": "service_unavailable", "message": message, "param": None}
        _finish(settings.require("database_url"), evaluation_id, attempt, Status.FAILED, error=error_body)


def _request(settings: Settings, registry: BaseModelRegistry, evaluation_id: str) -> _Request:
    with transaction(settings.require("database_url")) as session:
        row = session.get_one(Evaluation, evaluation_id)
        org = session.get_one(Organization, row.organization_id)
        file_key = session.scalar(
            select(StoredFile.storage_key).where(
                StoredFile.id == row.file_id, StoredFile.organization_id == row.organization_id
            )
        )
        if file_key is None:
            raise TaskFailed("file_not_found", f"The file '{row.file_id}' was deleted before the evaluation ran")
        adapters = {}
        for side, model_id in (("model", row.model), ("baseline", row.baseline)):
            try:
                adapters[side] = resolve(session, registry, org, model_id).adapter_prefix
            except UnknownModel:
                message = f"The model '{model_id}' was deleted before the evaluation ran"
                raise TaskFailed("model_not_found", message) from None
        return _Request(row.base_model, file_key, row.max_examples, row.max_tokens, adapters)


def _evaluate(
    settings: Settings, registry: BaseModelRegistry, request: _Request, should_stop: Callable[[], bool]
) -> dict:
    store = store_for(settings)
    # Streamed: reading stops at the last example used, however large the file.
    examples = held_out_examples(stream_examples(store, request.file_key), request.max_examples)
    if not examples:
        raise TaskFailed("invalid_file", "No example of the file ends with an assistant answer to compare with")
    options = resolve_training_options(registry.get(request.base_model), None)
    config = TrainingConfig(
        n_epochs=1,
        batch_size=MEASURING_BATCH,
        learning_rate=0.0,
        seed=0,
        max_seq_length=options["max_seq_length"],
        train_on_inputs=False,
    )
    with tempfile.TemporaryDirectory() as directory:
        adapter_dirs = _fetch_adapters(store, request.adapters, Path(directory))
        model, tokenizer = registry.load(request.base_model, device=compute_device(settings))
        with_base = None in request.adapters.values()
        outcome = answer_and_measure(
            model, tokenizer, adapter_dirs, examples, config, request.max_tokens, with_base, should_stop
        )

    def name(side: str) -> str | None:
        return side if request.adapters[side] else None

    return evaluation_report(
        examples,
        outcome.answers[name("baseline")],
        outcome.answers[name("model")],
        token_metrics=(outcome.metrics[name("baseline")], outcome.metrics[name("model")]),
        sides=COMPARISON,
    )


def _fetch_adapters(store: ObjectStore, prefixes: dict[str, str | None], directory: Path) -> dict[str, Path]:
    fetched = {}
    for side, prefix in prefixes.items():
        if prefix is None:
            continue
        fetched[side] = directory / side
        try:
            verified_fetch(store.download_prefix)(prefix, fetched[side])
        except FileNotFoundError:
            raise TaskFailed("model_not_found", f"The {side}'s adapter was deleted before the evaluation ran") from None
    return fetched


def _finish(url: str, evaluation_id: str, attempt: int, status: Status, **values: object) -> None:
    """Ends the evaluation, if this attempt still runs it (it may have been cancelled, or given to another)."""
    with transaction(url) as session:
        if not EVALUATIONS.move(session, evaluation_id, (Status.RUNNING,), status, attempt, **values):
            log.info("evaluations.finish.lost", evaluation_id=evaluation_id, attempt=attempt, status=status)
            return
    WORK_FINISHED.labels("evaluation", status.value).inc()
