"""Creating, reading and cancelling evaluations; a worker runs them (`worker.evaluation_runner`)."""

from sqlalchemy.orm import Session

from app.api.evaluations.schemas import EvaluationCreate
from app.api.jobs.service import dataset
from app.api.models import service as catalog
from app.api.pagination import paginate
from app.core import ids
from app.core.errors import InvalidRequest, ModelNotFound, NotFound
from app.core.lifecycle import ACTIVE, EVALUATIONS, Status
from app.core.scoped import get_owned
from app.core.tables import Evaluation, Organization
from app.ml.base_models.registry import BaseModelRegistry


def _model(session: Session, registry: BaseModelRegistry, org: Organization, model_id: str, param: str) -> str:
    """The base model of a model this organisation may use."""
    try:
        return catalog.resolve(session, registry, org, model_id).base_model
    except ModelNotFound:
        raise NotFound(
            f"The model '{model_id}' does not exist or you do not have access to it.",
            param=param,
            code="model_not_found",
        ) from None


def create_evaluation(
    session: Session, registry: BaseModelRegistry, org: Organization, body: EvaluationCreate
) -> Evaluation:
    base_model = _model(session, registry, org, body.model, "model")
    catalog.check_chat_template_of(registry, base_model)
    baseline = body.baseline or base_model
    if _model(session, registry, org, baseline, "baseline") != base_model:
        raise InvalidRequest(
            f"The baseline '{baseline}' is not built on '{base_model}', the base model of '{body.model}'; "
            "an evaluation compares models of one base model",
            param="baseline",
        )
    dataset(session, org, body.file, "file")
    row = Evaluation(
        id=ids.new_id("eval"),
        organization_id=org.id,
        model=body.model,
        baseline=baseline,
        base_model=base_model,
        file_id=body.file,
        max_examples=body.max_examples,
        max_tokens=body.max_tokens,
        status=Status.QUEUED,
    )
    session.add(row)
    session.flush()
    return row


def get_evaluation(session: Session, org: Organization, evaluation_id: str) -> Evaluation:
    return get_owned(session, Evaluation, org.id, evaluation_id, "evaluation")


def list_evaluations(
    session: Session, org: Organization, after: str | None, limit: int
) -> tuple[list[Evaluation], bool]:
    return paginate(session, Evaluation, [Evaluation.organization_id == org.id], after, limit)


def cancel_evaluation(session: Session, org: Organization, evaluation_id: str) -> Evaluation:
    """Queued or running → cancelled; a running one notices before its next answer and stops without a report."""
    row = get_evaluation(session, org, evaluation_id)
    if not EVALUATIONS.move(session, row.id, ACTIVE, Status.CANCELLED):
        session.refresh(row)
        raise InvalidRequest(
            f"Evaluation '{row.id}' has already {row.status}; only queued or running evaluations can be cancelled"
        )
    session.refresh(row)
    return row
