"""One training job from start to finish: validate → claim → train → publish the adapter.

Plain functions that tests call directly; the Celery task only wraps `run_job`.
"""

import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
import torch
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.orm import Session
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.core import job_state, usage
from app.core.announcements import announce_adapter
from app.core.db import after_commit, transaction
from app.core.lifecycle import ACTIVE, FINISHED, JOBS, Status
from app.core.metrics import OUTAGES_SURVIVED, WORK_FINISHED
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
from app.ml.scoring.settings import EvaluationSettings
from app.ml.training_options import resolve_training_options
from app.serving.answers import Stopped
from worker.checkpoints import EpochCheckpoints, checkpoint_model_name, latest_training_state
from worker.datasets import load_examples, load_pairs
from worker.distillation import distilled_examples
from worker.failures import TaskFailed, internal_error, time_limit_error
from worker.fine_tune import REPORT_SHARE_OF_TRAINING, Method, Split, fine_tune, hold_out
from worker.lease import LeaseKeeper
from worker.progress import JobProgress, time_limit
from worker.results import store_evaluation, store_results
from worker.training.preference import PreferenceSettings
from worker.training.state import TrainingState
from worker.training.trainer import TrainingConfig, TrainingHooks

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


def run_job(
    settings: Settings, registry: BaseModelRegistry, job_id: str, claimed: int | None = None, worker: str | None = None
) -> None:
    """Runs the job, claiming it first unless the fair queue claimed it already (`claimed`: that attempt);
    `worker`: the name of the worker running it, told in the job's events."""
    url = settings.require("database_url")
    with transaction(url) as session:
        job = session.get(FineTuningJob, job_id)
        status = job.status if job else None
    if status is None or status in FINISHED:
        log.info("jobs.skip", job_id=job_id, status=status)
        return
    attempt: int | None = None
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
                "worker": worker,
            }
        _event(url, job_id, attempt, "Fine-tuning job started", data=settings_used)
        with LeaseKeeper(url, JOBS, job_id, attempt, settings.job_lease_seconds):
            _train_and_publish(settings, registry, job_id, attempt)
    except TaskFailed as failure:
        _fail(settings, job_id, failure.error, attempt)
    except (torch.OutOfMemoryError, MemoryError):
        log.exception("jobs.out_of_memory", job_id=job_id)
        message = "Training ran out of memory; retry with a smaller batch_size or a smaller lora.max_seq_length"
        error = {"code": "out_of_memory", "message": message, "param": "hyperparameters.batch_size"}
        _fail(settings, job_id, error, attempt)
    except SoftTimeLimitExceeded:
        log.warning("jobs.time_limit", job_id=job_id, limit_s=settings.job_time_limit_seconds)
        _fail(settings, job_id, time_limit_error(settings, "Training"), attempt)
    except Exception as error:
        if (service := unavailable_service(error)) is not None:
            log.warning("jobs.outage", job_id=job_id, service=service, exc_info=True)
            OUTAGES_SURVIVED.labels(service).inc()
            _give_back_or_fail(settings, job_id, service, attempt)
            return
        log.exception("jobs.failed", job_id=job_id)
        _fail(settings, job_id, internal_error("Training", error), attempt)
        raise


def _event(url: str, job_id: str, attempt: int, message: str, **fields: Any) -> None:
    """An event of `attempt`, written only while it still runs the job: one the reaper replaced says nothing more."""
    with transaction(url) as session:
        if JOBS.holds(session, job_id, attempt):
            job_state.add_event(session, job_id, message, **fields)


def _give_back_or_fail(settings: Settings, job_id: str, service: str, attempt: int | None) -> None:
    """An outage is not the job's fault: the job goes back to the queue, keeping its training states, and
    resumes from its last checkpoint `outage_retry_seconds` later; its last attempt fails, naming the service.

    The events name the service only: the error's text (in the log) names hosts and ports tenants need not see.
    With the database down too, nothing can be recorded: the job's lease runs out and the reaper re-queues it.
    """
    delay = settings.outage_retry_seconds
    with outage_tolerated("jobs.outage.unrecorded", job_id=job_id):
        with transaction(settings.require("database_url")) as session:
            current = session.scalar(select(FineTuningJob.attempt).where(FineTuningJob.id == job_id)) or 0
            if attempt is not None and attempt != current:
                log.info("jobs.outage.superseded", job_id=job_id, attempt=attempt, current=current)
                return  # another attempt runs the job now: this one has nothing to give back
            if current < settings.max_job_attempts:
                retry_at = datetime.now(UTC) + timedelta(seconds=delay)
                if JOBS.give_back(session, job_id, retry_at, attempt):
                    message = (
                        f"{service.capitalize()} became unavailable; the job goes back to the queue and resumes "
                        f"from its last checkpoint in {delay:g} s (attempt {current + 1} of "
                        f"{settings.max_job_attempts})"
                    )
                    job_state.add_event(session, job_id, message, level="warn", data={"service": service})
                return
        message = (
            f"Training stopped {current} times because {service} was unavailable; check that the workers can reach "
            "it, then create the job again"
        )
        _fail(settings, job_id, {"code": "service_unavailable", "message": message, "param": None}, attempt)


def _fail(settings: Settings, job_id: str, error: dict, attempt: int | None) -> None:
    """Running (as `attempt`, when given) → failed with `error`; an attempt the job is no longer with fails
    nothing, and leaves the objects of the one that holds it alone."""
    url = settings.require("database_url")
    with transaction(url) as session:
        held = ACTIVE if attempt is None else (Status.RUNNING,)  # re-queued, it is no longer this attempt's
        if JOBS.move(session, job_id, held, Status.FAILED, attempt, error=error):
            job_state.add_event(session, job_id, error["message"], level="error")
            after_commit(session, WORK_FINISHED.labels("job", Status.FAILED.value).inc)
        else:
            log.info("jobs.fail.superseded", job_id=job_id, attempt=attempt, code=error["code"])
    _discard_if_ended(url, store_for(settings), job_id)


def _discard_if_ended(url: str, store: ObjectStore, job_id: str) -> None:
    """Deletes what an ended job leaves and no one will read: its training states once it is finished (it will not
    resume), its adapter once it failed or was cancelled. While the job runs or waits, they may be another
    attempt's, and a succeeded job's adapter is its model's."""
    with transaction(url) as session:
        job = session.execute(
            select(FineTuningJob.organization_id, FineTuningJob.status).where(FineTuningJob.id == job_id)
        ).first()
    if job is None or job.status not in FINISHED:
        return
    leftovers = [training_states_prefix(job.organization_id, job_id)]
    if job.status != Status.SUCCEEDED:
        leftovers.append(adapter_prefix(job.organization_id, job_id))
    _discard(store, *leftovers)


def _discard(store: ObjectStore, *prefixes: str) -> None:
    """What an ended job leaves and no one will read: training states (it will not resume), an adapter a failed
    attempt uploaded. With object storage down they stay, and the storage sweep removes them later."""
    with outage_tolerated("jobs.discard.postponed", prefixes=prefixes):
        for prefix in prefixes:
            store.delete_prefix(prefix)


def _leaked_examples(
    url: str, store: ObjectStore, job: FineTuningJob, training_key: str, validation_key: str, announce: bool
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
        _event(url, job.id, job.attempt, message, level="warn", data={"code": "validation_leakage", **shared})
    return shared["count"]


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
    if job.attempt != attempt:
        return  # the reaper gave the job to another attempt while this one started
    resumed = latest_training_state(url, store, job) if attempt > 1 else None
    leaked = (
        _leaked_examples(url, store, job, training_key, validation_key, announce=resumed is None)
        if validation_key
        else 0
    )
    options = EvaluationSettings.stored(job.evaluation_options)
    progress = JobProgress(
        url,
        job_id,
        attempt,
        settings.job_lease_seconds,
        deadline=time_limit(settings),
        max_metrics_events=settings.max_metrics_events,
        report_share=REPORT_SHARE_OF_TRAINING if options.max_examples else 0.0,
    )
    if job.method.get("type") == "distillation":  # the teacher first, so that it is not in memory beside the student
        try:
            distilled, held_out_given = distilled_examples(
                settings, registry, job, training_key, validation_key, should_stop=progress.should_stop
            )
        except Stopped:
            return _stopped(url, store, job_id)
        split = _split(url, job, distilled, held_out_given, announce=resumed is None)
    else:
        split = _datasets(url, store, job, training_key, validation_key, announce=resumed is None)
    model, tokenizer = _load_base_model(settings, registry, job)
    if resumed is None:
        _announce_default_template(url, registry, job)
    name = fine_tuned_model_name(job, org_name or "")
    checkpoints = EpochCheckpoints(url, store, job, name, settings.job_lease_seconds)
    if resumed is not None:
        checkpoints.resuming_from(resumed[0].step_number)
        _announce_resume(url, job, resumed[1])
    prefix = adapter_prefix(job.organization_id, job.id)
    with tempfile.TemporaryDirectory() as start_from, tempfile.TemporaryDirectory() as adapter_dir:
        if job.start_adapter_prefix:
            _start_adapter(store, job, Path(start_from), resumed=resumed is not None)
        hooks = TrainingHooks(
            on_step=progress.on_step,
            should_stop=progress.should_stop,
            on_epoch_end=checkpoints.on_epoch_end,
            resume=resumed[1] if resumed else None,
            start_from=Path(start_from) if job.start_adapter_prefix else None,
        )
        try:
            outcome = fine_tune(
                model, tokenizer, split, training_config(registry, job), options, Path(adapter_dir),
                method=_method(job), hooks=hooks, leaked_examples=leaked,
                announce=lambda message, data=None, level="info": _event(
                    url, job_id, attempt, message, data=data, level=level
                ),
                checkpoint_name=lambda step: checkpoint_model_name(name, step),
            )  # fmt: skip
        except Stopped:
            return _stopped(url, store, job_id)
        if progress.should_stop() or not _still_holds(url, job_id, attempt):
            return _stopped(url, store, job_id)  # never overwrite what a newer attempt uploaded, or published
        store.upload_directory(prefix, Path(adapter_dir))
    if _publish(url, store, job, attempt, org_name or "", prefix, outcome.trained_tokens, outcome.report):
        announce_adapter(settings.require("redis_url"), job.base_model, prefix)
    _discard_if_ended(url, store, job_id)


def _method(job: FineTuningJob) -> Method:
    """What the job trains, as `fine_tune` takes it."""
    kind = job.method.get("type")
    if kind == "dpo":
        return Method(preference=PreferenceSettings(**job.method["dpo"]))
    if kind == "distillation":
        return Method(targets=f"the teacher's answers ({job.method['distillation']['teacher_model']})")
    return Method()


def _still_holds(url: str, job_id: str, attempt: int) -> bool:
    with transaction(url) as session:
        return JOBS.holds(session, job_id, attempt)


def _stopped(url: str, store: ObjectStore, job_id: str) -> None:
    """Training stopped before publishing: the job was cancelled (its leftovers go), or another attempt runs it
    now (they are that attempt's)."""
    log.info("jobs.stopped", job_id=job_id)
    _discard_if_ended(url, store, job_id)


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


def _datasets(
    url: str, store: ObjectStore, job: FineTuningJob, training_key: str, validation_key: str | None, announce: bool
) -> Split:
    """The examples (conversations, or preference pairs for DPO) to train on and the held-out ones: the validation
    file, or a seeded share of training."""
    load = load_pairs if job.method.get("type") == "dpo" else load_examples
    training: list = load(store, training_key)
    return _split(url, job, training, load(store, validation_key) if validation_key else None, announce)


def _split(url: str, job: FineTuningJob, examples: list, validation: list | None, announce: bool) -> Split:
    """The held-out examples given (a validation file), or a seeded share of `examples` held out to measure
    overfitting and choose the epochs; when `announce`, events say how many."""
    split = hold_out(examples, validation, job.seed)
    if not announce:
        return split
    if not split.given:
        indices = split.held_out_indices
        message = (
            f"No validation file: holding out {len(indices)} of {len(examples)} training examples (chosen by seed "
            f"{job.seed}) to measure overfitting and choose the epochs"
            if indices
            else f"No validation file, and {len(examples)} examples are too few to hold any out"
        )
        _event(url, job.id, job.attempt, message, data={"held_out_examples": [i + 1 for i in indices]})
    message = f"Training on {len(split.training)} examples; {len(split.held_out)} held out for validation"
    data = {"training_examples": len(split.training), "validation_examples": len(split.held_out)}
    _event(url, job.id, job.attempt, message, data=data)
    return split


def _start_adapter(store: ObjectStore, job: FineTuningJob, directory: Path, resumed: bool) -> None:
    """The adapter of the fine-tuned model this job trains further. The first attempt fetches it from that model
    and keeps a copy beside the training states, which a resumed attempt reads: deleting the parent model once the
    job started must not fail its resume."""
    kept = f"{training_states_prefix(job.organization_id, job.id)}/start-adapter"
    if resumed and next(iter(store.list_keys(kept + "/")), None) is not None:
        verified_fetch(store.download_prefix)(kept, directory)
        return
    try:
        verified_fetch(store.download_prefix)(job.start_adapter_prefix or "", directory)
    except FileNotFoundError:
        message = f"The model '{job.model}' that this job trains further was deleted before training started"
        raise TaskFailed("model_not_found", message, "model") from None
    store.upload_directory(kept, directory)


def _announce_default_template(url: str, registry: BaseModelRegistry, job: FineTuningJob) -> None:
    """Says so when the base model has no chat template of its own and none was given: the fine-tuned model is
    served with the same default, so its answers end with EOS."""
    if registry.template_source(job.base_model) != "default":
        return
    message = (
        "The base model has no chat template: trained with Loraport's default template (role headers in plain "
        "text, each assistant turn ending with the model's EOS token)"
    )
    _event(url, job.id, job.attempt, message, data={"chat_template": "default"})


def _announce_resume(url: str, job: FineTuningJob, resumed: TrainingState) -> None:
    message = (
        f"Resumed from step {resumed.step} (the checkpoint of epoch {resumed.epochs_done}) "
        "after the previous worker was lost"
    )
    _event(url, job.id, job.attempt, message, data={"resumed_from_step": resumed.step})


def _publish(
    url: str,
    store: ObjectStore,
    job: FineTuningJob,
    attempt: int,
    org_name: str,
    prefix: str,
    trained_tokens: int,
    report: dict | None,
) -> bool:
    """Records the model, the results files and the evaluation report if the job is still running as `attempt` (it
    may have been cancelled, or given to another attempt)."""
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
            attempt,
            fine_tuned_model=name,
            trained_tokens=trained_tokens,
            result_files=[file.id for file in results],
            evaluation=report,
        ):
            log.info("jobs.publish.lost", job_id=job.id)
            session.flush()  # the move's statement may have flushed the rows already: delete them either way
            for file in results:
                session.delete(file)
                store.delete(file.storage_key)
            return False
        usage.add(
            session, job.organization_id, usage.FINE_TUNING, job.base_model, requests=1, trained_tokens=trained_tokens
        )
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
    WORK_FINISHED.labels("job", Status.SUCCEEDED.value).inc()
    return True
