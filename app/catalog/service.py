"""Resolving a model id to a base model and, for fine-tuned ids, an adapter."""

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.base_models.registry import BaseModelRegistry, UnknownBaseModel
from app.errors import InvalidRequest, ModelNotFound
from app.tables import FineTunedModel, FineTuningJob, JobCheckpoint, Organization


@dataclass(frozen=True)
class ModelRef:
    id: str
    base_model: str
    adapter_prefix: str | None
    created: int
    owned_by: str


def resolve(session: Session, registry: BaseModelRegistry, org: Organization, model_id: str) -> ModelRef:
    """A base model or one of this organisation's live fine-tuned models; anything else is 404."""
    try:
        spec = registry.get(model_id)
        return ModelRef(model_id, model_id, None, spec.created, "loraport")
    except UnknownBaseModel:
        pass
    if ":ckpt-step-" in model_id:
        return _checkpoint(session, org, model_id)
    row = _fine_tuned(session, org, model_id)
    return ModelRef(row.id, row.base_model, row.adapter_prefix, int(row.created_at.timestamp()), org.id)


def _checkpoint(session: Session, org: Organization, model_id: str) -> ModelRef:
    """An epoch checkpoint of one of this organisation's jobs, served like a fine-tuned model."""
    found = session.execute(
        select(JobCheckpoint, FineTuningJob.base_model)
        .join(FineTuningJob, JobCheckpoint.job_id == FineTuningJob.id)
        .where(JobCheckpoint.fine_tuned_model_checkpoint == model_id, FineTuningJob.organization_id == org.id)
    ).first()
    if found is None:
        raise ModelNotFound(model_id)
    checkpoint, base_model = found
    return ModelRef(model_id, base_model, checkpoint.storage_prefix, int(checkpoint.created_at.timestamp()), org.id)


def _fine_tuned(session: Session, org: Organization, model_id: str) -> FineTunedModel:
    row = session.scalar(
        select(FineTunedModel).where(
            FineTunedModel.id == model_id,
            FineTunedModel.organization_id == org.id,
            FineTunedModel.deleted.is_(False),
        )
    )
    if row is None:
        raise ModelNotFound(model_id)
    return row


def list_models(session: Session, registry: BaseModelRegistry, org: Organization) -> list[ModelRef]:
    refs = [resolve(session, registry, org, model_id) for model_id in registry.ids()]
    rows = session.scalars(
        select(FineTunedModel)
        .where(FineTunedModel.organization_id == org.id, FineTunedModel.deleted.is_(False))
        .order_by(FineTunedModel.created_at)
    )
    refs += [
        ModelRef(row.id, row.base_model, row.adapter_prefix, int(row.created_at.timestamp()), org.id) for row in rows
    ]
    return refs


def delete_model(session: Session, registry: BaseModelRegistry, org: Organization, model_id: str) -> str:
    """Marks a fine-tuned model deleted and returns its adapter prefix, to remove once committed."""
    if model_id in registry.ids():
        raise InvalidRequest(f"'{model_id}' is a base model; only fine-tuned models can be deleted", param="model")
    row = _fine_tuned(session, org, model_id)
    row.deleted = True
    session.flush()
    return row.adapter_prefix
