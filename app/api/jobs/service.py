"""Creating, reading and cancelling jobs for one organisation."""

import json
import secrets
from typing import Any

from sqlalchemy.orm import Session

from app.api.files.report import ready_report
from app.api.files.service import get_file
from app.api.jobs.capacity import job_needs
from app.api.jobs.schemas import DpoOptions, EvaluationOptions, Hyperparameters, JobCreate
from app.api.models import service as catalog
from app.api.pagination import paginate
from app.core import ids, job_state
from app.core.errors import InvalidRequest, ModelNotFound, NotFound
from app.core.lifecycle import ACTIVE, JOBS, Status
from app.core.scoped import get_owned
from app.core.storage import ObjectStore
from app.core.tables import FineTuningJob, JobCheckpoint, JobEvent, Organization, StoredFile
from app.core.worker_devices import Capabilities, why_none_can_run
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.datasets import CHAT, PREFERENCE, PROMPT_COMPLETION, PROMPTS
from app.ml.hyperparameters import resolve
from app.ml.models import ModelRef
from app.ml.training_options import continue_adapter, resolve_training_options

SUPERVISED_FORMATS = (CHAT, PROMPT_COMPLETION)
DISTILLATION_FORMATS = (PROMPTS, CHAT, PROMPT_COMPLETION)  # a teacher answers the prompts; answers are ignored
FORMATS_WANTED = {
    SUPERVISED_FORMATS: "supervised fine-tuning and evaluation use chat or prompt/completion examples",
    (PREFERENCE,): "DPO trains on preference pairs",
    DISTILLATION_FORMATS: "distillation runs on prompts (or chat or prompt/completion examples, whose prompts it uses)",
}
DEFAULT_DPO_BETA = 0.1  # the DPO paper's and TRL's default


def dataset(
    session: Session, org: Organization, file_id: str, param: str, formats: tuple[str, ...] = SUPERVISED_FORMATS
) -> StoredFile:
    """The organisation's processed fine-tune file named by `param`, holding examples of one of `formats`."""
    try:
        row = get_file(session, org, file_id)
    except NotFound:
        raise NotFound(f"No such file: '{file_id}'", param=param, code="file_not_found") from None
    if row.purpose != "fine-tune":
        raise InvalidRequest(f"File '{file_id}' has purpose '{row.purpose}', not 'fine-tune'", param=param)
    if row.format not in formats:
        raise InvalidRequest(
            f"File '{file_id}' holds {row.format} examples; {FORMATS_WANTED[formats]}",
            param=param,
            code=f"invalid_{param}",
        )
    if row.status != "processed":
        raise InvalidRequest(
            f"File '{file_id}' is not ready to use (status '{row.status}')", param=param, code=f"invalid_{param}"
        )
    return row


def _report_warnings(session: Session, store: ObjectStore, job: FineTuningJob, row: StoredFile, param: str) -> None:
    """Copies the file's data-report warnings into the job's events, where people watching the job see them; a
    report still being computed is not waited for (`GET /v1/files/{id}/report` shows it once ready)."""
    for warning in (ready_report(session, row) or {}).get("warnings", []):
        job_state.add_event(session, job.id, f"{param} {row.id}: {warning['message']}", level="warn", data=warning)


def _method_type(body: JobCreate) -> str:
    method = body.method.type if body.method else "supervised"
    if method == "reinforcement":
        raise InvalidRequest(
            "method.type 'reinforcement' is not supported; use 'supervised', 'dpo' or 'distillation'",
            param="method.type",
        )
    if body.dpo is not None and method != "dpo":
        raise InvalidRequest("dpo options are only for method.type 'dpo'", param="dpo")
    if method == "dpo" and body.lora is not None and body.lora.train_on_inputs:
        raise InvalidRequest("lora.train_on_inputs is only for supervised fine-tuning", param="lora.train_on_inputs")
    return method


def _hyperparameters(body: JobCreate) -> Hyperparameters:
    if body.method is not None:
        chosen = {"dpo": body.method.dpo, "distillation": body.method.distillation}.get(
            body.method.type, body.method.supervised
        )
        if chosen is not None and chosen.hyperparameters is not None:
            return chosen.hyperparameters
    return body.hyperparameters or Hyperparameters()


def _method(body: JobCreate, method_type: str, hyperparameters: Hyperparameters) -> dict[str, Any]:
    """What the worker reads: the type, and for DPO its beta and loss options."""
    if method_type == "distillation":
        if body.method is None or body.method.distillation is None:
            raise InvalidRequest("method.distillation.teacher_model is required", param="method.distillation")
        options = body.method.distillation.model_dump(exclude={"hyperparameters"})
        return {"type": "distillation", "distillation": options}
    if method_type != "dpo":
        return {"type": "supervised"}
    beta = getattr(hyperparameters, "beta", "auto")
    options = (body.dpo or DpoOptions()).model_dump()
    return {"type": "dpo", "dpo": {"beta": DEFAULT_DPO_BETA if beta == "auto" else beta, **options}}


def _teacher(session: Session, registry: BaseModelRegistry, org: Organization, model_id: str) -> ModelRef:
    try:
        return catalog.resolve(session, registry, org, model_id)
    except ModelNotFound:
        raise NotFound(
            f"The teacher model '{model_id}' does not exist or you do not have access to it.",
            param="method.distillation.teacher_model",
            code="model_not_found",
        ) from None


def _starting_point(session: Session, registry: BaseModelRegistry, org: Organization, model_id: str) -> ModelRef:
    """The base model to fine-tune, or the fine-tuned model (or checkpoint) whose adapter training continues."""
    try:
        return catalog.resolve(session, registry, org, model_id)
    except ModelNotFound:
        raise NotFound(
            f"The model '{model_id}' is neither a base model that can be fine-tuned here "
            f"({', '.join(registry.ids())}) nor one of your fine-tuned models",
            param="model",
            code="model_not_found",
        ) from None


def _training_options(
    store: ObjectStore, registry: BaseModelRegistry, start: ModelRef, body: JobCreate
) -> dict[str, Any]:
    requested = body.lora.model_dump(exclude_none=True) if body.lora else {}
    options = resolve_training_options(registry.get(start.base_model), requested)
    if start.adapter_prefix is None:
        return options
    adapter_config = json.loads(store.read_bytes(f"{start.adapter_prefix}/adapter_config.json"))
    return continue_adapter(options, adapter_config, requested)


def create_job(
    session: Session,
    store: ObjectStore,
    org: Organization,
    body: JobCreate,
    registry: BaseModelRegistry,
    workers: dict[str, Capabilities],
    wait_limit_seconds: float,
) -> FineTuningJob:
    """A new job, with what it needs of a worker; `workers`: the live ones, to tell now if none can run it."""
    start = _starting_point(session, registry, org, body.model)
    if body.integrations:
        raise InvalidRequest("Integrations are not supported", param="integrations")
    method_type = _method_type(body)
    if method_type == "distillation" and body.method and body.method.distillation:
        teacher = _teacher(session, registry, org, body.method.distillation.teacher_model)
        catalog.check_chat_template_of(registry, teacher.base_model, "method.distillation.teacher_model")
    formats = {"dpo": (PREFERENCE,), "distillation": DISTILLATION_FORMATS}.get(method_type, SUPERVISED_FORMATS)
    training = dataset(session, org, body.training_file, "training_file", formats)
    validation = (
        dataset(session, org, body.validation_file, "validation_file", formats) if body.validation_file else None
    )
    requested = _hyperparameters(body)
    resolved = resolve(
        training.example_count, requested.n_epochs, requested.batch_size, requested.learning_rate_multiplier
    )
    training_options = _training_options(store, registry, start, body)
    catalog.check_chat_template_of(registry, start.base_model)
    needs = job_needs(registry, start.base_model, training_options, resolved, workers)
    job = FineTuningJob(
        id=ids.job_id(),
        organization_id=org.id,
        model=body.model,
        base_model=start.base_model,
        start_adapter_prefix=start.adapter_prefix,
        training_file=training.id,
        validation_file=body.validation_file,
        suffix=body.suffix,
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        status=Status.QUEUED,  # files are checked as they are uploaded; a training worker is sent it once stored
        method=_method(body, method_type, requested),
        hyperparameters=resolved.as_dict(),
        training_options=training_options,
        evaluation_options=(body.evaluation or EvaluationOptions()).model_dump(),
        job_metadata=body.metadata,
        needs_cuda=needs.cuda,
        gpu_memory_bytes=needs.gpu_memory_bytes,
    )
    session.add(job)
    session.flush()
    job_state.add_event(session, job.id, "Created fine-tuning job")
    _report_warnings(session, store, job, training, "training_file")
    if validation is not None:
        _report_warnings(session, store, job, validation, "validation_file")
    job_state.add_event(session, job.id, "Files validated; job queued for a training worker")
    if why := why_none_can_run(needs, workers):
        job_state.tell_waiting(session, job.id, why, needs, wait_limit_seconds)
    return job


def get_job(session: Session, org: Organization, job_id: str) -> FineTuningJob:
    return get_owned(session, FineTuningJob, org.id, job_id, "fine-tuning job")


def get_evaluation(session: Session, org: Organization, job_id: str) -> dict:
    """The job's evaluation report; a 404 says why there is none."""
    job = get_job(session, org, job_id)
    if job.evaluation is not None:
        return job.evaluation
    if job.status in ACTIVE:
        why = f"it is written when the job succeeds, and the job is {job.status}"
    elif job.status != Status.SUCCEEDED:
        why = f"the job {job.status}"
    elif (job.evaluation_options or {}).get("max_examples") == 0:
        why = "evaluation was turned off for it (evaluation.max_examples 0)"
    else:
        why = "it had no held-out example to evaluate on, or the evaluation failed (its events say which)"
    raise NotFound(f"Job '{job.id}' has no evaluation report: {why}", code="evaluation_not_found")


def list_jobs(session: Session, org: Organization, after: str | None, limit: int) -> tuple[list[FineTuningJob], bool]:
    return paginate(session, FineTuningJob, [FineTuningJob.organization_id == org.id], after, limit)


def cancel_job(session: Session, org: Organization, job_id: str) -> FineTuningJob:
    job = get_job(session, org, job_id)
    if not JOBS.move(session, job.id, ACTIVE, Status.CANCELLED):
        session.refresh(job)
        raise InvalidRequest(f"Job '{job.id}' has already {job.status}; only active jobs can be cancelled")
    job_state.add_event(session, job.id, "Fine-tuning job cancelled")
    session.refresh(job)
    return job


def list_events(
    session: Session, org: Organization, job_id: str, after: str | None, limit: int
) -> tuple[list[JobEvent], bool]:
    job = get_job(session, org, job_id)
    return paginate(session, JobEvent, [JobEvent.job_id == job.id], after, limit)


def list_checkpoints(
    session: Session, org: Organization, job_id: str, after: str | None, limit: int
) -> tuple[list[JobCheckpoint], bool]:
    job = get_job(session, org, job_id)
    return paginate(session, JobCheckpoint, [JobCheckpoint.job_id == job.id], after, limit)
