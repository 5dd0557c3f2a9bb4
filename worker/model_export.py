"""One merged-model export, from queued to a tar in object storage: the base model, the adapter applied with peft and
merged into its weights, saved as a plain transformers checkpoint (safetensors, config, generation config, tokenizer)
with a checksum manifest.

A plain function that tests call directly; the Celery task only wraps `run_export`. The claim is a guarded update, so
a duplicate message does nothing; each attempt uploads to a key of its own and the row names the tar only once it is
wholly uploaded (a multipart upload is invisible until completed), so a download never finds half an export.
"""

import tarfile
import tempfile
from pathlib import Path

import structlog
from celery.exceptions import SoftTimeLimitExceeded
from peft import PeftModel
from sqlalchemy import func, update

from app.core.db import transaction
from app.core.errors import AdapterCorrupted
from app.core.settings import Settings
from app.core.storage import ObjectStore, ObjectWriter, export_key, store_for
from app.core.tables import ModelExport, Organization
from app.ml.adapter_manifest import verified_fetch, write_manifest
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.devices import compute_device
from app.ml.models import UnknownModel, resolve
from worker.failures import TaskFailed, internal_error, time_limit_error

log = structlog.get_logger()


class _Counted:
    """The upload, counting the tar's bytes on their way to it."""

    def __init__(self, writer: ObjectWriter) -> None:
        self.writer, self.bytes = writer, 0

    def write(self, data: bytes) -> int:
        self.writer.write(data)
        self.bytes += len(data)
        return len(data)


def run_export(settings: Settings, registry: BaseModelRegistry, export_id: str) -> None:
    url = settings.require("database_url")
    with transaction(url) as session:
        claimed = session.execute(
            update(ModelExport)
            .where(ModelExport.id == export_id, ModelExport.status == "queued")
            .values(status="running", attempt=ModelExport.attempt + 1, started_at=func.now())
            .returning(ModelExport.attempt, ModelExport.organization_id, ModelExport.model)
        ).first()
    if claimed is None:  # running, finished, or deleted with its model: a duplicate or late message
        log.info("exports.skip", export_id=export_id)
        return
    attempt, organization_id, model_id = claimed
    key = export_key(organization_id, export_id, attempt)
    try:
        size = _export(settings, registry, organization_id, model_id, key)
    except TaskFailed as failure:
        _finish(url, export_id, attempt, "failed", error=failure.error)
    except SoftTimeLimitExceeded:
        _finish(url, export_id, attempt, "failed", error=time_limit_error(settings, "Export"))
    except Exception as error:
        log.exception("exports.failed", export_id=export_id)
        _finish(url, export_id, attempt, "failed", error=internal_error("Export", error))
        raise
    else:
        if not _finish(url, export_id, attempt, "succeeded", storage_key=key, bytes=size):
            store_for(settings).delete(key)  # the model was deleted meanwhile: nobody may download it now


def _export(settings: Settings, registry: BaseModelRegistry, organization_id: str, model_id: str, key: str) -> int:
    """Merges the model into its base and uploads the checkpoint as one tar to `key`; returns its size."""
    store = store_for(settings)
    with transaction(settings.require("database_url")) as session:
        try:
            model = resolve(session, registry, session.get_one(Organization, organization_id), model_id)
        except UnknownModel:
            raise TaskFailed("model_not_found", f"The model '{model_id}' was deleted before its export ran") from None
    with tempfile.TemporaryDirectory() as directory:
        adapter, merged = Path(directory, "adapter"), Path(directory, "merged")
        try:
            verified_fetch(store.download_prefix)(model.adapter_prefix or "", adapter)
        except FileNotFoundError:
            message = f"The adapter of '{model_id}' was deleted before its export ran"
            raise TaskFailed("model_not_found", message) from None
        except AdapterCorrupted as corrupted:
            raise TaskFailed(corrupted.code or "adapter_corrupted", corrupted.message) from None
        # Unquantized even for a QLoRA model: merged into 4-bit weights, the adapter would be rounded away.
        base, tokenizer = registry.load(model.base_model, device=compute_device(settings))
        PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(merged)
        tokenizer.save_pretrained(merged)
        write_manifest(merged)
        return _upload_tar(store, merged, key)


def _upload_tar(store: ObjectStore, directory: Path, key: str) -> int:
    writer = store.writer(key)
    counted = _Counted(writer)
    try:
        with tarfile.open(fileobj=counted, mode="w|") as archive:  # type: ignore[call-overload]  # write() suffices
            for path in sorted(p for p in directory.rglob("*") if p.is_file()):
                archive.add(path, arcname=path.relative_to(directory).as_posix())
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return counted.bytes


def _finish(url: str, export_id: str, attempt: int, status: str, **values: object) -> bool:
    """Ends the export if this attempt still runs it; False when it does not (its model was deleted)."""
    with transaction(url) as session:
        finished = session.execute(
            update(ModelExport)
            .where(ModelExport.id == export_id, ModelExport.status == "running", ModelExport.attempt == attempt)
            .values(status=status, finished_at=func.now(), **values)
            .returning(ModelExport.id)
        ).first()
    if finished is None:
        log.info("exports.finish.lost", export_id=export_id, attempt=attempt, status=status)
    return finished is not None
