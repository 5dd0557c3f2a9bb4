"""Merged-model exports: asked for once per model (asking again returns the same one), made by a worker
(`worker.model_export`), downloadable as a tar once it succeeded."""

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.api.models.service import resolve
from app.core import export_state, ids
from app.core.errors import Conflict, InvalidRequest, NotFound
from app.core.settings import Settings
from app.core.tables import ModelExport, Organization
from app.ml.base_models.registry import BaseModelRegistry


def request_export(
    session: Session, settings: Settings, registry: BaseModelRegistry, org: Organization, model_id: str
) -> tuple[ModelExport, bool]:
    """The model's export, made queued if it is new, failed or lost; and whether it needs a worker now."""
    model = resolve(session, registry, org, model_id)
    if model.adapter_prefix is None:
        raise InvalidRequest(
            f"'{model_id}' is a base model: there is no adapter to merge into it; export one of its fine-tuned models",
            param="model",
            code="model_has_no_adapter",
        )
    session.execute(
        insert(ModelExport)
        .values(
            id=ids.new_id("modelexport"),
            organization_id=org.id,
            model=model.id,
            base_model=model.base_model,
            adapter_prefix=model.adapter_prefix,
            status="queued",
        )
        .on_conflict_do_nothing(index_elements=["organization_id", "model"])
    )
    export = session.scalars(
        select(ModelExport)
        .where(ModelExport.organization_id == org.id, ModelExport.model == model.id)
        .execution_options(populate_existing=True)
    ).one()
    if export.status == "queued":
        return export, True  # new, or its message lost: another one is harmless, the claim is guarded
    retried = session.execute(
        update(ModelExport)
        .where(ModelExport.id == export.id, (ModelExport.status == "failed") | export_state.lost(settings))
        .values(status="queued", error=None, started_at=None, finished_at=None)
        .returning(ModelExport.id)
    ).first()
    if retried is not None:
        session.refresh(export)
    return export, retried is not None


def get_export(
    session: Session, registry: BaseModelRegistry, org: Organization, model_id: str, export_id: str
) -> ModelExport:
    """The export, of a model this organisation may still use; anything else is 404."""
    model = resolve(session, registry, org, model_id)
    export = session.scalar(
        select(ModelExport).where(
            ModelExport.id == export_id, ModelExport.organization_id == org.id, ModelExport.model == model.id
        )
    )
    if export is None:
        raise NotFound(f"No such export of '{model_id}': '{export_id}'", param="id")
    return export


def ready_key(export: ModelExport) -> str:
    """The stored tar of a succeeded export; a clear 409 while it is not ready."""
    if export.status != "succeeded" or export.storage_key is None:
        hint = "ask for it again to retry" if export.status == "failed" else "poll the export until it has succeeded"
        raise Conflict(
            f"Export '{export.id}' of '{export.model}' is {export.status}, not ready to download; {hint}",
            code="export_not_ready",
        )
    return export.storage_key
