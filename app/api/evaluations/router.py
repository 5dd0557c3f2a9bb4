"""/v1/evaluations (extension)"""

from typing import Annotated

from fastapi import APIRouter, Query

from app.api import quotas
from app.api.deps import OrgDep, RegistryDep, SessionDep, SettingsDep
from app.api.evaluations import service
from app.api.evaluations.schemas import EvaluationCreate, EvaluationPublic
from app.api.pagination import ListPage, list_page
from app.core.queue import enqueue_after_commit, enqueue_evaluation

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("", response_model=EvaluationPublic)
def create_evaluation(
    body: EvaluationCreate, org: OrgDep, session: SessionDep, settings: SettingsDep, registry: RegistryDep
) -> EvaluationPublic:
    """Queue a held-out evaluation of `model` against `baseline` on `file`; poll it until it is finished. It is
    stored queued and sent to a worker once committed; with the broker down, the reaper sends it later."""
    quotas.check_active_evaluations(session, org.id, settings)
    row = service.create_evaluation(session, registry, org, body)
    enqueue_after_commit(session, settings, enqueue_evaluation, row.id)
    return EvaluationPublic.of(row)


@router.get("", response_model=ListPage[EvaluationPublic])
def list_evaluations(
    org: OrgDep, session: SessionDep, after: str | None = None, limit: Limit = 20
) -> ListPage[EvaluationPublic]:
    rows, has_more = service.list_evaluations(session, org, after, limit)
    return list_page([EvaluationPublic.of(row) for row in rows], has_more)


@router.get("/{evaluation_id}", response_model=EvaluationPublic)
def retrieve_evaluation(evaluation_id: str, org: OrgDep, session: SessionDep) -> EvaluationPublic:
    return EvaluationPublic.of(service.get_evaluation(session, org, evaluation_id))


@router.post("/{evaluation_id}/cancel", response_model=EvaluationPublic)
def cancel_evaluation(evaluation_id: str, org: OrgDep, session: SessionDep) -> EvaluationPublic:
    """Cancel a queued or running evaluation; a running one stops before its next answer and writes no report."""
    return EvaluationPublic.of(service.cancel_evaluation(session, org, evaluation_id))
