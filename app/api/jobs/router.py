"""/v1/fine_tuning/jobs"""

from typing import Annotated

import structlog
from fastapi import APIRouter, Query, Request

from app.api import idempotency
from app.api.deps import OrgDep, SessionDep, SettingsDep, StoreDep
from app.api.idempotency import IdempotencyKey
from app.api.jobs import service
from app.api.jobs.schemas import CheckpointPublic, EventPublic, JobCreate, JobPublic
from app.api.pagination import list_body
from app.core.queue import enqueue_after_commit, enqueue_training
from app.core.worker_devices import reported

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
log = structlog.get_logger()
Limit = Annotated[int, Query(ge=1, le=100)]
_CREATE = "POST /v1/fine_tuning/jobs"


@router.post("", response_model=JobPublic)
def create_job(
    body: JobCreate,
    request: Request,
    org: OrgDep,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    """Create a fine-tuning job; it is queued for a training worker once stored."""
    digest = idempotency.request_hash(body.model_dump())
    if idempotency_key:
        earlier = idempotency.replay(session, org, idempotency_key, _CREATE, digest)
        if earlier is not None:
            return JobPublic.of(service.get_job(session, org, earlier["id"]))
    workers = reported(settings.require("redis_url"))
    job = service.create_job(session, store, org, body, request.app.state.registry, workers)
    if idempotency_key:
        idempotency.remember(session, org, idempotency_key, _CREATE, digest, {"id": job.id})
    enqueue_after_commit(session, settings, enqueue_training, job.id)
    return JobPublic.of(job)


@router.get("")
def list_jobs(org: OrgDep, session: SessionDep, after: str | None = None, limit: Limit = 20) -> dict:
    rows, has_more = service.list_jobs(session, org, after, limit)
    return list_body([JobPublic.of(row).model_dump() for row in rows], has_more)


@router.get("/{job_id}", response_model=JobPublic)
def retrieve_job(job_id: str, org: OrgDep, session: SessionDep) -> JobPublic:
    return JobPublic.of(service.get_job(session, org, job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, org: OrgDep, session: SessionDep) -> JobPublic:
    """Cancel a job; a running one stops at its next training step and publishes nothing."""
    return JobPublic.of(service.cancel_job(session, org, job_id))


@router.get("/{job_id}/evaluation")
def retrieve_evaluation(job_id: str, org: OrgDep, session: SessionDep) -> dict:
    """How the fine-tuned model answers held-out examples compared with its base model (extension)."""
    report = service.get_evaluation(session, org, job_id)
    return {"object": "fine_tuning.job.evaluation", "fine_tuning_job_id": job_id, **report}


@router.get("/{job_id}/events")
def list_events(job_id: str, org: OrgDep, session: SessionDep, after: str | None = None, limit: Limit = 20) -> dict:
    rows, has_more = service.list_events(session, org, job_id, after, limit)
    return list_body([EventPublic.of(row).model_dump() for row in rows], has_more)


@router.get("/{job_id}/checkpoints")
def list_checkpoints(
    job_id: str, org: OrgDep, session: SessionDep, after: str | None = None, limit: Limit = 10
) -> dict:
    rows, has_more = service.list_checkpoints(session, org, job_id, after, limit)
    return list_body([CheckpointPublic.of(row).model_dump() for row in rows], has_more)
