"""The SQL of added base models: deployment-wide rows (`BaseModelRecord`), and what still depends on one."""

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.core.lifecycle import ACTIVE
from app.core.tables import BaseModelRecord, FineTunedModel, FineTuningJob

BASE_MODELS_PREFIX = "base-models"


def model_prefix(model_id: str) -> str:
    """Everything stored for an added model, every revision."""
    return f"{BASE_MODELS_PREFIX}/{model_id}"


def revision_prefix(model_id: str, revision: str) -> str:
    return f"{model_prefix(model_id)}/{revision}"


def weights_prefix(model_id: str, revision: str) -> str:
    """Where an added model's transformers directory lives in the object store."""
    return f"{revision_prefix(model_id, revision)}/weights"


def spec_key(model_id: str, revision: str) -> str:
    """Its settings as JSON beside the weights, for processes without a database (inference replicas)."""
    return f"{revision_prefix(model_id, revision)}/spec.json"


def all_records(session: Session) -> list[BaseModelRecord]:
    return list(session.scalars(select(BaseModelRecord).order_by(BaseModelRecord.created_at, BaseModelRecord.id)))


def find(session: Session, model_id: str) -> BaseModelRecord | None:
    return session.get(BaseModelRecord, model_id)


def remove(session: Session, model_id: str) -> None:
    session.execute(delete(BaseModelRecord).where(BaseModelRecord.id == model_id))


def dependants(session: Session, model_id: str) -> tuple[int, int]:
    """(live fine-tuned models of this base, of every organisation; its jobs still validating, queued or running)."""
    models = session.scalar(
        select(func.count())
        .select_from(FineTunedModel)
        .where(FineTunedModel.base_model == model_id, FineTunedModel.deleted.is_(False))
    )
    jobs = session.scalar(
        select(func.count())
        .select_from(FineTuningJob)
        .where(FineTuningJob.base_model == model_id, FineTuningJob.status.in_(ACTIVE))
    )
    return int(models or 0), int(jobs or 0)
