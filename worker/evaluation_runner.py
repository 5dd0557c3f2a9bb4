"""One evaluation asked for through `POST /v1/evaluations`, from queued to a report or an error.

A plain function that tests call directly; the Celery task only wraps `run_evaluation`. A re-delivered message
runs an unfinished evaluation again from the start: greedy answers make the second run's report the same.
"""

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
from sqlalchemy import select, update

from app.core.db import transaction
from app.core.lifecycle import FINISHED, Status
from app.core.settings import Settings
from app.core.storage import ObjectStore, store_for
from app.core.tables import Evaluation, Organization, StoredFile
from app.ml.adapter_manifest import verified_fetch
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.devices import compute_device
from app.ml.models import UnknownModel, resolve
from app.ml.scoring.report import Sides, evaluation_report, held_out_examples
from app.ml.training_options import resolve_training_options
from worker.datasets import load_examples
from worker.held_out import answer_and_measure
from worker.training.trainer import TrainingConfig

log = structlog.get_logger()
COMPARISON = Sides("baseline", "model", "baseline_answer", "model_answer", "baseline", "model")
MEASURING_BATCH = 8  # held-out examples per teacher-forced forward


class EvaluationFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message}


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
        row = session.get(Evaluation, evaluation_id)
        if row is None or row.status in FINISHED:
            log.info("evaluations.skip", evaluation_id=evaluation_id)
            return
        row.status = Status.RUNNING
    try:
        report = _evaluate(settings, registry, _request(settings, registry, evaluation_id))
    except EvaluationFailed as failure:
        _finish(url, evaluation_id, Status.FAILED, error=failure.error)
    except Exception as error:
        log.exception("evaluations.failed", evaluation_id=evaluation_id)
        _finish(
            url,
            evaluation_id,
            Status.FAILED,
            error={"code": "evaluation_error", "message": f"Evaluation failed: {error}"},
        )
        raise
    else:
        _finish(url, evaluation_id, Status.SUCCEEDED, report=report)


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
            raise EvaluationFailed("file_not_found", f"The file '{row.file_id}' was deleted before the evaluation ran")
        adapters = {}
        for side, model_id in (("model", row.model), ("baseline", row.baseline)):
            try:
                adapters[side] = resolve(session, registry, org, model_id).adapter_prefix
            except UnknownModel:
                message = f"The model '{model_id}' was deleted before the evaluation ran"
                raise EvaluationFailed("model_not_found", message) from None
        return _Request(row.base_model, file_key, row.max_examples, row.max_tokens, adapters)


def _evaluate(settings: Settings, registry: BaseModelRegistry, request: _Request) -> dict:
    store = store_for(settings)
    examples = held_out_examples(load_examples(store, request.file_key), request.max_examples)
    if not examples:
        raise EvaluationFailed("invalid_file", "No example of the file ends with an assistant answer to compare with")
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
            model, tokenizer, adapter_dirs, examples, config, request.max_tokens, with_base=with_base
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
            raise EvaluationFailed(
                "model_not_found", f"The {side}'s adapter was deleted before the evaluation ran"
            ) from None
    return fetched


def _finish(url: str, evaluation_id: str, status: str, **values: object) -> None:
    with transaction(url) as session:
        session.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id, Evaluation.status.not_in(FINISHED))
            .values(status=status, finished_at=datetime.now(UTC), **values)
        )
