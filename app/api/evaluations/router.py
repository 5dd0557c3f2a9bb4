"""/v1/evaluations (extension)"""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.api.deps import OrgDep, SessionDep, SettingsDep
from app.api.evaluations import service
from app.api.evaluations.schemas import EvaluationCreate, EvaluationPublic
from app.api.pagination import list_body
from app.core.errors import ServiceUnavailable
from app.core.lifecycle import Status
from app.core.queue import enqueue_evaluation

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("", response_model=EvaluationPublic)
def create_evaluation(
    body: EvaluationCreate, request: Request, org: OrgDep, session: SessionDep, settings: SettingsDep
) -> EvaluationPublic:
    """Queue a held-out evaluation of `model` against `baseline` on `file`; poll it until it is finished."""
    row = service.create_evaluation(session, request.app.state.registry, org, body)
    session.commit()
    try:
        enqueue_evaluation(settings, row.id)
    except Exception as error:
        row.status, row.finished_at = Status.FAILED, datetime.now(UTC)
        row.error = {"code": "queue_unavailable", "message": "The evaluation could not be queued; create it again"}
        session.commit()
        raise ServiceUnavailable(f"The evaluation could not be queued ({error}); try again") from None
    return EvaluationPublic.of(row)


@router.get("")
def list_evaluations(org: OrgDep, session: SessionDep, after: str | None = None, limit: Limit = 20) -> dict:
    rows, has_more = service.list_evaluations(session, org, after, limit)
    return list_body([EvaluationPublic.of(row).model_dump() for row in rows], has_more)


@router.get("/{evaluation_id}", response_model=EvaluationPublic)
def retrieve_evaluation(evaluation_id: str, org: OrgDep, session: SessionDep) -> EvaluationPublic:
    return EvaluationPublic.of(service.get_evaluation(session, org, evaluation_id))
