"""The models an organisation may use: listing, resolving with a 404 for the rest, and deleting fine-tunes."""

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import InvalidRequest, ModelNotFound
from app.core.storage import checkpoints_prefix, export_prefix
from app.core.tables import FineTunedModel, JobCheckpoint, ModelExport, Organization
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.chat_templates import ChatTemplateError, check_chat_template
from app.ml.models import ModelRef, UnknownModel, fine_tuned_ref, live_fine_tuned
from app.ml.models import resolve as resolve_model


def resolve(session: Session, registry: BaseModelRegistry, org: Organization, model_id: str) -> ModelRef:
    """A base model or one of this organisation's live fine-tuned models; anything else is 404."""
    try:
        return resolve_model(session, registry, org, model_id)
    except UnknownModel:
        raise ModelNotFound(model_id) from None


def check_chat_template_of(registry: BaseModelRegistry, base_model: str, param: str = "model") -> None:
    """Refuses a base model whose chat template cannot be trained on or served (a row from before `add` checked
    templates), before a worker finds out."""
    try:
        check_chat_template(registry.tokenizer(base_model))
    except ChatTemplateError as error:
        raise InvalidRequest(
            f"The base model '{base_model}' cannot be used here: {error}", param=param, code="invalid_chat_template"
        ) from None


def list_models(session: Session, registry: BaseModelRegistry, org: Organization) -> list[ModelRef]:
    refs = [resolve(session, registry, org, model_id) for model_id in registry.ids()]
    rows = session.scalars(
        select(FineTunedModel)
        .where(FineTunedModel.organization_id == org.id, FineTunedModel.deleted.is_(False))
        .order_by(FineTunedModel.created_at)
    )
    return refs + [fine_tuned_ref(row) for row in rows]


@dataclass(frozen=True)
class DeletedModel:
    """What to remove once a model's deletion is committed: its adapter, and its job's epoch checkpoints (each
    servable as `…:ckpt-step-N` until then), from memory and from storage; and the merged exports of them all."""

    adapter_prefix: str
    checkpoint_prefixes: list[str]
    checkpoints_folder: str
    export_prefixes: list[str]


def delete_model(session: Session, registry: BaseModelRegistry, org: Organization, model_id: str) -> DeletedModel:
    """Marks a fine-tuned model deleted; returns what to remove once that is committed."""
    if model_id in registry.ids():
        raise InvalidRequest(f"'{model_id}' is a base model; only fine-tuned models can be deleted", param="model")
    try:
        row = live_fine_tuned(session, org, model_id)
    except UnknownModel:
        raise ModelNotFound(model_id) from None
    row.deleted = True
    session.flush()
    checkpoints = list(session.scalars(select(JobCheckpoint.storage_prefix).where(JobCheckpoint.job_id == row.job_id)))
    exports = _delete_exports(session, org, [row.adapter_prefix, *checkpoints])
    return DeletedModel(row.adapter_prefix, checkpoints, checkpoints_prefix(org.id, row.job_id), exports)


def _delete_exports(session: Session, org: Organization, adapter_prefixes: list[str]) -> list[str]:
    """Deletes the rows of the exports made from these adapters; returns their storage prefixes. A worker still
    merging one then finds its row gone and removes what it uploaded."""
    exports = list(
        session.scalars(
            select(ModelExport).where(
                ModelExport.organization_id == org.id, ModelExport.adapter_prefix.in_(adapter_prefixes)
            )
        )
    )
    for export in exports:
        session.delete(export)
    session.flush()
    return [export_prefix(org.id, export.id) for export in exports]
