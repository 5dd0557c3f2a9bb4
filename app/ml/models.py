"""Resolving a model id to a base model and, for fine-tuned ids and checkpoints, an adapter; only the
organisation's own live models resolve."""

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.lifecycle import Status
from app.core.tables import FineTunedModel, FineTuningJob, JobCheckpoint, Organization
from app.ml.base_models.registry import BaseModelRegistry, UnknownBaseModel


class UnknownModel(LookupError):
    """No base model, and none of the organisation's live fine-tuned models or checkpoints, has this id."""

    def __init__(self, model_id: str) -> None:
        super().__init__(model_id)
        self.model_id = model_id


@dataclass(frozen=True)
class ModelRef:
    id: str
    base_model: str
    adapter_prefix: str | None
    created: int
    owned_by: str
    chat_template: str | None = None  # of a base model: "model", "given" or "default" (see BaseModelSpec)


def resolve(session: Session, registry: BaseModelRegistry, org: Organization, model_id: str) -> ModelRef:
    """A base model or one of this organisation's live fine-tuned models or checkpoints, else `UnknownModel`."""
    try:
        spec = registry.get(model_id)
        return ModelRef(model_id, model_id, None, spec.created, "loraport", spec.chat_template_source)
    except UnknownBaseModel:
        pass
    if ":ckpt-step-" in model_id:
        return _checkpoint(session, org, model_id)
    return fine_tuned_ref(live_fine_tuned(session, org, model_id))


def fine_tuned_ref(row: FineTunedModel) -> ModelRef:
    return ModelRef(row.id, row.base_model, row.adapter_prefix, int(row.created_at.timestamp()), row.organization_id)


def _checkpoint(session: Session, org: Organization, model_id: str) -> ModelRef:
    """An epoch checkpoint of one of this organisation's jobs, served like a fine-tuned model while that job's model
    is: only once the job succeeded, and no more once its model is deleted (its checkpoints go with it)."""
    found = session.execute(
        select(JobCheckpoint, FineTuningJob.base_model)
        .join(FineTuningJob, JobCheckpoint.job_id == FineTuningJob.id)
        .join(FineTunedModel, FineTunedModel.job_id == FineTuningJob.id)
        .where(
            JobCheckpoint.fine_tuned_model_checkpoint == model_id,
            FineTuningJob.organization_id == org.id,
            FineTuningJob.status == Status.SUCCEEDED,
            FineTunedModel.deleted.is_(False),
        )
    ).first()
    if found is None:
        raise UnknownModel(model_id)
    checkpoint, base_model = found
    return ModelRef(model_id, base_model, checkpoint.storage_prefix, int(checkpoint.created_at.timestamp()), org.id)


def live_fine_tuned(session: Session, org: Organization, model_id: str) -> FineTunedModel:
    row = session.scalar(
        select(FineTunedModel).where(
            FineTunedModel.id == model_id,
            FineTunedModel.organization_id == org.id,
            FineTunedModel.deleted.is_(False),
        )
    )
    if row is None:
        raise UnknownModel(model_id)
    return row
