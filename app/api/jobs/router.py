"""/v1/fine_tuning/jobs"""

from typing import Annotated

from fastapi import APIRouter, Query

from app.api import idempotency, quotas
from app.api.deps import OrgDep, RegistryDep, SessionDep, SettingsDep, StoreDep
from app.api.idempotency import IdempotencyKey
from app.api.jobs import service
from app.api.jobs.schemas import CheckpointPublic, EventPublic, JobCreate, JobEvaluationReport, JobPublic
from app.api.pagination import ListPage, list_page
from app.core.queue import enqueue_after_commit, training_sender
from app.core.worker_devices import reported

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
Limit = Annotated[int, Query(ge=1, le=100)]
_CREATE = "POST /v1/fine_tuning/jobs"


@router.post("", response_model=JobPublic)
def create_job(
    body: JobCreate,
    org: OrgDep,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    registry: RegistryDep,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    """Create a fine-tuning job; it is queued for a training worker once stored."""
    digest = idempotency.request_hash(body.model_dump())
    if idempotency_key:
        earlier = idempotency.replay(session, org, idempotency_key, _CREATE, digest)
        if earlier is not None:
            return JobPublic.of(service.get_job(session, org, earlier["id"]))
    quotas.check_active_jobs(session, org.id, settings)
    workers = reported(settings.require("redis_url"))
    job = service.create_job(session, store, org, body, registry, workers, settings.unrunnable_job_timeout_seconds)
    if idempotency_key:
        idempotency.remember(session, org, idempotency_key, _CREATE, digest, {"id": job.id})
    enqueue_after_commit(session, settings, training_sender(job.needs_cuda), job.id)
    return JobPublic.of(job)


@router.get("", response_model=ListPage[JobPublic])
def list_jobs(org: OrgDep, session: SessionDep, after: str | None = None, limit: Limit = 20) -> ListPage[JobPublic]:
    rows, has_more = service.list_jobs(session, org, after, limit)
    return list_page([JobPublic.of(row) for row in rows], has_more)


@router.get("/{job_id}", response_model=JobPublic)
def retrieve_job(job_id: str, org: OrgDep, session: SessionDep) -> JobPublic:
    return JobPublic.of(service.get_job(session, org, job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, org: OrgDep, session: SessionDep) -> JobPublic:
    """Cancel a job; a running one stops at its next training step and publishes nothing."""
    return JobPublic.of(service.cancel_job(session, org, job_id))


@router.get("/{job_id}/evaluation", response_model=JobEvaluationReport)
def retrieve_evaluation(job_id: str, org: OrgDep, session: SessionDep) -> JobEvaluationReport:
    """How the fine-tuned model answers held-out examples compared with its base model (extension)."""
    report = service.get_evaluation(session, org, job_id)
    return JobEvaluationReport.model_validate({"fine_tuning_job_id": job_id, **report})


@router.get("/{job_id}/events", response_model=ListPage[EventPublic])
def list_events(
    job_id: str, org: OrgDep, session: SessionDep, after: str | None = None, limit: Limit = 20
) -> ListPage[EventPublic]:
    rows, has_more = service.list_events(session, org, job_id, after, limit)
    return list_page([EventPublic.of(row) for row in rows], has_more)


@router.get("/{job_id}/checkpoints", response_model=ListPage[CheckpointPublic])
def list_checkpoints(
    job_id: str, org: OrgDep, session: SessionDep, after: str | None = None, limit: Limit = 10
) -> ListPage[CheckpointPublic]:
    rows, has_more = service.list_checkpoints(session, org, job_id, after, limit)
    return list_page([CheckpointPublic.of(row) for row in rows], has_more)
