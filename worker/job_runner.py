"""One training job from start to finish: validate → claim → train → publish the adapter.

Plain functions that tests call directly; the Celery task only wraps `run_job`.
"""

import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.core import job_state
from app.core.announcements import announce_adapter
from app.core.db import transaction
from app.core.lifecycle import ACTIVE, FINISHED, JOBS, Status
from app.core.outages import outage_tolerated, unavailable_service
from app.core.settings import Settings
from app.core.storage import ObjectStore, adapter_prefix, store_for, training_states_prefix
from app.core.tables import FineTunedModel, FineTuningJob, Organization, StoredFile
from app.ml.adapter_manifest import verified_fetch
from app.ml.base_models.quantization import FOUR_BIT
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.datasets import leakage
from app.ml.datasets.report import lines_text
from app.ml.datasets.stored import profile
from app.ml.devices import compute_device
from app.ml.hyperparameters import Resolved, learning_rate
from app.ml.training_options import resolve_training_options
from worker.checkpoints import EpochCheckpoints, latest_training_state
from worker.datasets import load_examples, load_pairs
from worker.distillation import distilled_examples
from worker.failures import TaskFailed
from worker.job_evaluation import report_on_job
from worker.lease import LeaseKeeper
from worker.progress import JobProgress
from worker.results import store_evaluation, store_results
from worker.training.data import split_held_out
from worker.training.preference import PreferenceSettings
from worker.training.state import TrainingState
from worker.training.trainer import (
    TrainingConfig,
    TrainingHooks,
    TrainingResult,
    save_adapter,
    train_lora,
    train_preference,
)

log = structlog.get_logger()
# DPO nudges a model that already answers well: its steps are a tenth of supervised fine-tuning's.
DPO_LEARNING_RATE_SHARE = 0.1


def fine_tuned_model_name(job: FineTuningJob, org_name: str) -> str:
    return f"ft:{job.base_model}:{org_name}:{job.suffix or ''}:{job.id.removeprefix('ftjob-')}"


def _dataset_key(session: Session, job: FineTuningJob, file_id: str, param: str) -> str:
    key = session.scalar(
        select(StoredFile.storage_key).where(
            StoredFile.id == file_id, StoredFile.organization_id == job.organization_id
        )
    )
    if key is None:
        raise TaskFailed("invalid_file", f"The file '{file_id}' was deleted before training started", param)
    return key


def _check_datasets(settings: Settings, job_id: str) -> None:
    """Fails the job now, with the file named, if a dataset was deleted after the job was created."""
    with transaction(settings.require("database_url")) as session:
        job = session.get_one(FineTuningJob, job_id)
        keys = [_dataset_key(session, job, job.training_file, "training_file")]
        if job.validation_file:
            keys.append(_dataset_key(session, job, job.validation_file, "validation_file"))
    for key in keys:
        store_for(settings).head(key)


def run_job(settings: Settings, registry: BaseModelRegistry, job_id: str, claimed: int | None = None) -> None:
    """Runs the job, claiming it first unless the fair queue claimed it already (`claimed`: that attempt)."""
    url = settings.require("database_url")
    with transaction(url) as session:
        job = session.get(FineTuningJob, job_id)
        status = job.status if job else None
    if status is None or status in FINISHED:
        log.info("jobs.skip", job_id=job_id, status=status)
        return
    try:
        with transaction(url) as session:
            attempt = claimed or JOBS.claim(session, job_id, settings.job_lease_seconds)
        if attempt is None:
            log.info("jobs.claim.lost", job_id=job_id)
            return
        _check_datasets(settings, job_id)
        with transaction(url) as session:
            job = session.get_one(FineTuningJob, job_id)
            settings_used = {
                "hyperparameters": job.hyperparameters,
                "learning_rate": training_config(registry, job).learning_rate,
                "lora": job.training_options,
                "attempt": attempt,
            }
            job_state.add_event(session, job_id, "Fine-tuning job started", data=settings_used)
        with LeaseKeeper(url, JOBS, job_id, attempt, settings.job_lease_seconds):
            _train_and_publish(settings, registry, job_id, attempt)
    except TaskFailed as failure:
        _fail(settings, job_id, failure.error)
    except (torch.OutOfMemoryError, MemoryError):
        log.exception("jobs.out_of_memory", job_id=job_id)
        message = "Training ran out of memory; retry with a smaller batch_size or a smaller lora.max_seq_length"
        _fail(settings, job_id, {"code": "out_of_memory", "message": message, "param": "hyperparameters.batch_size"})
    except Exception as error:
        if (service := unavailable_service(error)) is not None:
            log.warning("jobs.outage", job_id=job_id, service=service, exc_info=True)
            _give_back_or_fail(settings, job_id, service, error)
            return
        log.exception("jobs.failed", job_id=job_id)
        _fail(settings, job_id, {"code": "training_error", "message": f"Training failed: {error}", "param": None})
        raise


def _give_back_or_fail(settings: Settings, job_id: str, service: str, error: Exception) -> None:
    """An outage is not the job's fault: the job goes back to the queue, keeping its training states, and
    resumes from its last checkpoint `outage_retry_seconds` later; its last attempt fails, naming the service.

    With the database down too, nothing can be recorded: the job's lease runs out and the reaper re-queues it.
    """
    delay = settings.outage_retry_seconds
    with outage_tolerated("jobs.outage.unrecorded", job_id=job_id):
        with transaction(settings.require("database_url")) as session:
            attempt = session.scalar(select(FineTuningJob.attempt).where(FineTuningJob.id == job_id)) or 0
            if attempt < settings.max_job_attempts:
                if JOBS.give_back(session, job_id, datetime.now(UTC) + timedelta(seconds=delay)):
                    message = (
                        f"{service.capitalize()} became unavailable ({error}); the job goes back to the queue and "
                        f"resumes from its last checkpoint in {delay:g} s (attempt {attempt + 1} of "
                        f"{settings.max_job_attempts})"
                    )
                    job_state.add_event(session, job_id, message, level="warn")
                return
        message = (
            f"Training stopped {attempt} times because {service} was unavailable (last: {error}); check that the "
            "workers can reach it, then create the job again"
        )
        _fail(settings, job_id, {"code": "service_unavailable", "message": message, "param": None})


def _fail(settings: Settings, job_id: str, error: dict) -> None:
    with transaction(settings.require("database_url")) as session:
        if JOBS.move(session, job_id, ACTIVE, Status.FAILED, error=error):
            job_state.add_event(session, job_id, error["message"], level="error")
        job = session.execute(
            select(FineTuningJob.organization_id, FineTuningJob.status).where(FineTuningJob.id == job_id)
        ).first()
    if job is None:
        return
    leftovers = [training_states_prefix(job.organization_id, job_id)]
    if job.status != Status.SUCCEEDED:  # an error after publishing must not take the model's adapter with it
        leftovers.append(adapter_prefix(job.organization_id, job_id))
    _discard(store_for(settings), *leftovers)


def _discard(store: ObjectStore, *prefixes: str) -> None:
    """What an ended job leaves and no one will read: training states (it will not resume), an adapter a failed
    attempt uploaded. With object storage down they stay, and the storage sweep removes them later."""
    with outage_tolerated("jobs.discard.postponed", prefixes=prefixes):
        for prefix in prefixes:
            store.delete_prefix(prefix)


def _leaked_examples(
    url: str, store: ObjectStore, job_id: str, training_key: str, validation_key: str, announce: bool
) -> int:
    """How many validation examples also appear in training (they make held-out scores look better than they
    are); when `announce`, an event says which."""
    shared = leakage(profile(store, training_key).fingerprints(), profile(store, validation_key).fingerprints())
    if shared["count"] and announce:
        lines = sorted(line for group in shared["groups"] for line in group["validation_lines"])
        message = (
            f"{shared['count']} validation example(s) also appear in the training file (validation lines "
            f"{lines_text(lines)}); the validation loss will look better than it is"
        )
        with transaction(url) as session:
            job_state.add_event(session, job_id, message, level="warn", data={"code": "validation_leakage", **shared})
    return shared["count"]


def _hold_out(url: str, job: FineTuningJob, examples: list, announce: bool) -> tuple[list, list]:
    """Without a validation file, a seeded share of the training file is held out to measure overfitting."""
    train_indices, held_out_indices = split_held_out(len(examples), job.seed)
    if not announce:
        return [examples[i] for i in train_indices], [examples[i] for i in held_out_indices]
    if held_out_indices:
        message = (
            f"No validation file: holding out {len(held_out_indices)} of {len(examples)} training examples "
            f"(chosen by seed {job.seed}) to measure overfitting and keep the best epoch"
        )
    else:
        message = f"No validation file, and {len(examples)} examples are too few to hold any out"
    with transaction(url) as session:
        job_state.add_event(session, job.id, message, data={"held_out_examples": [i + 1 for i in held_out_indices]})
    return [examples[i] for i in train_indices], [examples[i] for i in held_out_indices]


def training_config(registry: BaseModelRegistry, job: FineTuningJob) -> TrainingConfig:
    """The trainer's settings for a job; one created before an option existed trains with its default."""
    options = resolve_training_options(registry.get(job.base_model), None) | (job.training_options or {})
    config = config_for(Resolved(**job.hyperparameters), options, job.seed)
    if job.method.get("type") == "dpo":
        return replace(config, learning_rate=config.learning_rate * DPO_LEARNING_RATE_SHARE)
    return config


def config_for(hyper: Resolved, options: dict, seed: int) -> TrainingConfig:
    """The trainer's settings for resolved hyperparameters and `lora` options."""
    return TrainingConfig(
        n_epochs=hyper.n_epochs,
        batch_size=hyper.batch_size,
        learning_rate=learning_rate(options["base_learning_rate"], hyper.learning_rate_multiplier, hyper.batch_size),
        seed=seed,
        lora_r=options["r"],
        lora_alpha=options["alpha"],
        lora_dropout=options["dropout"],
        target_modules=tuple(options["target_modules"]) or None,
        max_seq_length=options["max_seq_length"],
        warmup_ratio=options["warmup_ratio"],
        lr_scheduler=options["lr_scheduler"],
        max_grad_norm=options["max_grad_norm"],
        weight_decay=options["weight_decay"],
        train_on_inputs=options["train_on_inputs"],
    )


def _train_and_publish(settings: Settings, registry: BaseModelRegistry, job_id: str, attempt: int) -> None:
    url = settings.require("database_url")
    store = store_for(settings)
    with transaction(url) as session:
        job = session.get_one(FineTuningJob, job_id)
        org_name = session.scalar(select(Organization.name).where(Organization.id == job.organization_id))
        training_key = _dataset_key(session, job, job.training_file, "training_file")
        validation_key = (
            _dataset_key(session, job, job.validation_file, "validation_file") if job.validation_file else None
        )
    resumed = latest_training_state(url, store, job) if job.attempt > 1 else None
    leaked = (
        _leaked_examples(url, store, job_id, training_key, validation_key, announce=resumed is None)
        if validation_key
        else 0
    )
    if job.method.get("type") == "distillation":  # the teacher first, so that it is not in memory beside the student
        distilled, held_out_given = distilled_examples(settings, registry, job, training_key, validation_key)
        training, held_out = _split(url, job, distilled, held_out_given, announce=resumed is None)
    else:
        training, held_out = _datasets(url, store, job, training_key, validation_key, announce=resumed is None)
    model, tokenizer = _load_base_model(settings, registry, job)
    config = training_config(registry, job)
    preference = preference_settings(job)
    progress = JobProgress(url, job_id, attempt, settings.job_lease_seconds)
    checkpoints = EpochCheckpoints(url, store, job, fine_tuned_model_name(job, org_name or ""))
    if resumed is not None:
        checkpoints.resuming_from(resumed[0].step_number)
        _announce_resume(url, job_id, resumed[1])
    with tempfile.TemporaryDirectory() as start_from:
        if job.start_adapter_prefix:
            _fetch_start_adapter(store, job, Path(start_from))
        hooks = TrainingHooks(
            on_step=progress.on_step,
            should_stop=progress.should_stop,
            on_epoch_end=checkpoints.on_epoch_end,
            resume=resumed[1] if resumed else None,
            start_from=Path(start_from) if job.start_adapter_prefix else None,
        )
        if preference is None:
            result = train_lora(model, tokenizer, training, held_out, config, hooks=hooks)
        else:
            result = train_preference(model, tokenizer, training, held_out, config, preference, hooks=hooks)
    if result.stopped:
        log.info("jobs.stopped", job_id=job_id)
        _discard(store, training_states_prefix(job.organization_id, job_id))
        return
    _report_best_epoch(url, job_id, result)
    prefix = adapter_prefix(job.organization_id, job.id)
    with tempfile.TemporaryDirectory() as directory:
        save_adapter(result.model, Path(directory))
        store.upload_directory(prefix, Path(directory))
        report = report_on_job(url, store, job, result, tokenizer, Path(directory), held_out, config, leaked)
    if _publish(url, store, job, org_name or "", prefix, result, report):
        announce_adapter(settings.require("redis_url"), job.base_model, prefix)
    else:
        store.delete_prefix(prefix)
    _discard(store, training_states_prefix(job.organization_id, job_id))


def _load_base_model(
    settings: Settings, registry: BaseModelRegistry, job: FineTuningJob
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The job's base model, in 4-bit NF4 for a QLoRA job (which needs a CUDA worker)."""
    device = compute_device(settings)
    quantization = (job.training_options or {}).get("quantization")
    if quantization == FOUR_BIT and not device.startswith("cuda"):
        message = "lora.quantization '4bit' (QLoRA) needs a CUDA GPU, and the worker that took this job has none"
        raise TaskFailed("unsupported_device", message, "lora.quantization")
    return registry.load(job.base_model, device=device, quantization=quantization)


def preference_settings(job: FineTuningJob) -> PreferenceSettings | None:
    """The DPO loss of a DPO job; None for supervised fine-tuning."""
    if job.method.get("type") != "dpo":
        return None
    return PreferenceSettings(**job.method["dpo"])


def _datasets(
    url: str, store: ObjectStore, job: FineTuningJob, training_key: str, validation_key: str | None, announce: bool
) -> tuple[list, list]:
    """The examples (conversations, or preference pairs for DPO) to train on and the held-out ones: the validation
    file, or a seeded share of training."""
    load = load_pairs if job.method.get("type") == "dpo" else load_examples
    training: list = load(store, training_key)
    return _split(url, job, training, load(store, validation_key) if validation_key else None, announce)


def _split(url: str, job: FineTuningJob, training: list, held_out: list | None, announce: bool) -> tuple[list, list]:
    """The held-out examples given (a validation file), or a seeded share of `training`; an event says how many."""
    if held_out is None:
        training, held_out = _hold_out(url, job, training, announce)
    if announce:
        message = f"Training on {len(training)} examples; {len(held_out)} held out for validation"
        with transaction(url) as session:
            data = {"training_examples": len(training), "validation_examples": len(held_out)}
            job_state.add_event(session, job.id, message, data=data)
    return training, held_out


def _fetch_start_adapter(store: ObjectStore, job: FineTuningJob, directory: Path) -> None:
    """The adapter of the fine-tuned model this job trains further."""
    try:
        verified_fetch(store.download_prefix)(job.start_adapter_prefix or "", directory)
    except FileNotFoundError:
        message = f"The model '{job.model}' that this job trains further was deleted before training started"
        raise TaskFailed("model_not_found", message, "model") from None


def _announce_resume(url: str, job_id: str, resumed: TrainingState) -> None:
    message = (
        f"Resumed from step {resumed.step} (the checkpoint of epoch {resumed.epochs_done}) "
        "after the previous worker was lost"
    )
    with transaction(url) as session:
        job_state.add_event(session, job_id, message, data={"resumed_from_step": resumed.step})


def _report_best_epoch(url: str, job_id: str, result: TrainingResult) -> None:
    """Says so when a later epoch overfit and an earlier one is kept as the model."""
    best = result.best_epoch
    if best is None or best == result.epochs_run:
        return
    losses = result.epoch_losses
    message = (
        f"Validation loss rose from {losses[best - 1]:.4f} to {losses[-1]:.4f} after epoch {best}; keeping epoch {best}"
    )
    with transaction(url) as session:
        job_state.add_event(session, job_id, message, data={"best_epoch": best, "valid_losses": losses})


def _publish(
    url: str,
    store: ObjectStore,
    job: FineTuningJob,
    org_name: str,
    prefix: str,
    result: TrainingResult,
    report: dict | None,
) -> bool:
    """Records the model, the results files and the evaluation report if the job is still running (it may have
    been cancelled)."""
    name = fine_tuned_model_name(job, org_name)
    with transaction(url) as session:
        results = [store_results(session, store, job)]
        if report is not None:
            results.append(store_evaluation(session, store, job, report))
        if not JOBS.move(
            session,
            job.id,
            (Status.RUNNING,),
            Status.SUCCEEDED,
            fine_tuned_model=name,
            trained_tokens=result.trained_tokens,
            result_files=[file.id for file in results],
            evaluation=report,
        ):
            log.info("jobs.publish.lost", job_id=job.id)
            for file in results:
                session.expunge(file)
                store.delete(file.storage_key)
            return False
        session.add(
            FineTunedModel(
                id=name,
                organization_id=job.organization_id,
                job_id=job.id,
                base_model=job.base_model,
                adapter_prefix=prefix,
            )
        )
        job_state.add_event(session, job.id, f"New fine-tuned model created: {name}")
        job_state.add_event(session, job.id, "The job has successfully completed")
    return True
