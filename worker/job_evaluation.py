"""The evaluation report at the end of a job: measured on the held-out examples (or pairs), announced in events,
and never a reason to lose the trained model."""

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import structlog
from sqlalchemy import select
from transformers import PreTrainedTokenizerBase

from app.core import job_state
from app.core.db import transaction
from app.core.storage import ObjectStore
from app.core.tables import FineTuningJob, JobCheckpoint
from app.ml.adapter_manifest import verified_fetch
from app.ml.scoring.report import Losses
from app.ml.scoring.settings import EvaluationSettings
from worker.datasets import PreferenceExample
from worker.held_out import evaluate_fine_tune, evaluate_preference_tune
from worker.training.trainer import TrainingConfig, TrainingResult

log = structlog.get_logger()
CHECKPOINTS_EVALUATED = 3  # besides the model: the latest epochs, as many as OpenAI keeps checkpoints of


def report_on_job(
    url: str,
    store: ObjectStore,
    job: FineTuningJob,
    result: TrainingResult,
    tokenizer: PreTrainedTokenizerBase,
    adapter_dir: Path,
    held_out: Sequence[list[dict]] | Sequence[PreferenceExample],
    config: TrainingConfig,
    leaked: int,
) -> dict | None:
    """The evaluation report, with events before and after; `held_out` holds preference pairs for a DPO job and
    conversations otherwise. A failed evaluation is reported, and the trained model is published without it rather
    than lost."""
    options = EvaluationSettings.stored(job.evaluation_options)
    if options.max_examples == 0 or not held_out:
        return None
    count = min(options.max_examples, len(held_out))
    with transaction(url) as session:
        message = f"Evaluating the base model and the fine-tuned model on {count} held-out examples"
        if job.method.get("type") == "dpo":
            message = f"Evaluating the base model and the fine-tuned model on {count} held-out preference pairs"
        job_state.add_event(session, job.id, message, data={"held_out_examples": count})
    losses = Losses(result.epoch_train_losses, result.epoch_losses, result.best_epoch)
    try:
        if job.method.get("type") == "dpo":
            pairs = cast(Sequence[PreferenceExample], held_out)
            report = evaluate_preference_tune(result.model, tokenizer, pairs, config, options, losses, leaked)
        else:
            with tempfile.TemporaryDirectory() as directory:
                kept_epoch = result.best_epoch or result.epochs_run
                checkpoints = (
                    _other_checkpoints(url, store, job, kept_epoch, Path(directory)) if options.checkpoints else {}
                )
                conversations = cast(Sequence[list[dict]], held_out)
                report = evaluate_fine_tune(
                    result.model, tokenizer, adapter_dir, conversations, config, options, losses, leaked, checkpoints
                )
                if report is not None and job.method.get("type") == "distillation":
                    report["targets"] = f"the teacher's answers ({job.method['distillation']['teacher_model']})"
    except Exception as error:
        log.exception("jobs.evaluation.failed", job_id=job.id)
        report, message, level = None, f"The evaluation failed ({error}); the model is published without it", "warn"
    else:
        message = f"Evaluation: {report['verdict']}" if report else "No held-out example has an answer to evaluate"
        level = "warn" if report and report["warnings"] else "info"
    with transaction(url) as session:
        data = {"warnings": report["warnings"]} if report else None
        job_state.add_event(session, job.id, message, level=level, data=data)
    return report


def _other_checkpoints(
    url: str, store: ObjectStore, job: FineTuningJob, kept_epoch: int, directory: Path
) -> dict[str, Path]:
    """The latest checkpoints besides the kept epoch's (whose adapter is the model itself), fetched into
    `directory`: model id → adapter directory."""
    with transaction(url) as session:
        rows = session.execute(
            select(JobCheckpoint.fine_tuned_model_checkpoint, JobCheckpoint.storage_prefix, JobCheckpoint.metrics)
            .where(JobCheckpoint.job_id == job.id)
            .order_by(JobCheckpoint.step_number.desc())
        ).all()
    chosen = [(name, prefix) for name, prefix, metrics in rows if metrics.get("epoch") != kept_epoch]
    fetched = {}
    for name, prefix in chosen[:CHECKPOINTS_EVALUATED]:
        fetched[name] = directory / prefix.rsplit("/", 1)[-1]
        verified_fetch(store.download_prefix)(prefix, fetched[name])
    return fetched
