"""/v1/models"""

from functools import partial
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.api.deps import BackendDep, OrgDep, RegistryDep, SessionDep, SettingsDep, StoreDep
from app.api.models import exports, service
from app.api.models.adapter_archive import adapter_archive, archive_name
from app.api.models.schemas import ModelDeleted, ModelExportPublic, ModelList, ModelPublic
from app.core.db import after_commit
from app.core.queue import enqueue_after_commit, enqueue_export

router = APIRouter(prefix="/v1/models", tags=["models"])

_TAR: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A tar archive",
        "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _download(chunks: Any, filename: str, size: int) -> StreamingResponse:
    return StreamingResponse(
        chunks,
        media_type="application/x-tar",
        headers={
            "Content-Disposition": f"attachment; filename=\"{filename}\"; filename*=UTF-8''{quote(filename)}",
            "Content-Length": str(size),
        },
    )


@router.get("", response_model=ModelList)
def list_models(org: OrgDep, session: SessionDep, registry: RegistryDep) -> ModelList:
    return ModelList(data=[ModelPublic.of(ref) for ref in service.list_models(session, registry, org)])


# Declared before `/{model_id:path}`, which would otherwise take these paths as model ids.
@router.get("/{model_id:path}/adapter", response_class=StreamingResponse, responses=_TAR)
def download_adapter(
    model_id: str, org: OrgDep, session: SessionDep, registry: RegistryDep, store: StoreDep
) -> StreamingResponse:
    """The adapter of a fine-tuned model or checkpoint as a tar: peft's `adapter_config.json` and
    `adapter_model.safetensors`, and Loraport's checksum manifest; `PeftModel.from_pretrained` loads the extracted
    folder onto the base model."""
    archive = adapter_archive(store, service.resolve(session, registry, org, model_id))
    return _download(archive.chunks, archive.filename, archive.size)


@router.post("/{model_id:path}/exports", response_model=ModelExportPublic)
def create_export(
    model_id: str, org: OrgDep, session: SessionDep, settings: SettingsDep, registry: RegistryDep
) -> ModelExportPublic:
    """Ask for the model merged into its base model as a plain transformers checkpoint; a worker makes it. Asking
    again returns the same export (and retries one that failed)."""
    export, queued = exports.request_export(session, settings, registry, org, model_id)
    if queued:
        enqueue_after_commit(session, settings, enqueue_export, export.id)
    return ModelExportPublic.of(export)


@router.get("/{model_id:path}/exports/{export_id}", response_model=ModelExportPublic)
def retrieve_export(
    model_id: str, export_id: str, org: OrgDep, session: SessionDep, registry: RegistryDep
) -> ModelExportPublic:
    return ModelExportPublic.of(exports.get_export(session, registry, org, model_id, export_id))


@router.get("/{model_id:path}/exports/{export_id}/content", response_class=StreamingResponse, responses=_TAR)
def export_content(
    model_id: str, export_id: str, org: OrgDep, session: SessionDep, registry: RegistryDep, store: StoreDep
) -> StreamingResponse:
    """The merged checkpoint as a tar (safetensors weights, config, generation config, tokenizer and a checksum
    manifest) once the export has succeeded; 409 before."""
    export = exports.get_export(session, registry, org, model_id, export_id)
    key = exports.ready_key(export)
    return _download(store.open(key), archive_name(export.model, "merged"), export.bytes or 0)


# `{model_id:path}`: the SDK sends '/' inside ids as %2F, and fine-tuned ids contain ':'.
@router.get("/{model_id:path}", response_model=ModelPublic)
def retrieve_model(model_id: str, org: OrgDep, session: SessionDep, registry: RegistryDep) -> ModelPublic:
    return ModelPublic.of(service.resolve(session, registry, org, model_id))


@router.delete("/{model_id:path}", response_model=ModelDeleted)
def delete_model(
    model_id: str, org: OrgDep, session: SessionDep, store: StoreDep, registry: RegistryDep, backend: BackendDep
) -> ModelDeleted:
    """Delete a fine-tuned model: it and its job's checkpoints stop being served, and their adapters and merged
    exports are removed from storage."""
    deleted = service.delete_model(session, registry, org, model_id)
    # Once the row says deleted, no new request resolves the model or its checkpoints: then they leave memory, then
    # storage.
    for prefix in (deleted.adapter_prefix, *deleted.checkpoint_prefixes):
        after_commit(session, partial(backend.evict, prefix))
    after_commit(session, partial(store.delete_prefix, deleted.adapter_prefix))
    after_commit(session, partial(store.delete_prefix, deleted.checkpoints_folder))
    for prefix in deleted.export_prefixes:
        after_commit(session, partial(store.delete_prefix, prefix))
    return ModelDeleted(id=model_id)
