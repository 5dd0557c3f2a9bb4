"""Storage that work dying half-way leaves behind, cleared by the maintenance worker beside the reaper:

- S3 multipart uploads never completed nor aborted: an API process killed mid-upload leaves its parts in the
  bucket, invisible to listings but taking space, until someone aborts them.
- Parts of `/v1/uploads` that expired unfinished (an upload marks itself expired only when next touched), and
  those of completed or cancelled uploads that the API could not delete after its commit.
- What ended jobs could not delete because object storage was down then: training states, and the adapter a
  failed job's attempt uploaded.
- Epoch checkpoints nobody may use any more: those of failed or cancelled jobs, and of deleted models (which
  `DELETE /v1/models` removes itself, unless storage was down then).

`missing_objects` is the consistency check the other way round: rows that point at objects which are not there.
"""

from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.core.lifecycle import FINISHED, Status
from app.core.storage import ObjectStore, adapter_prefix, checkpoints_prefix, training_states_prefix
from app.core.tables import (
    BaseModelRecord,
    FineTunedModel,
    FineTuningJob,
    ModelExport,
    Organization,
    StoredFile,
    Upload,
    UploadPart,
)

# Longer than any upload streams (1 GiB at 1 MB/s is 17 min), short enough that space comes back the same day.
STALE_MULTIPART_AFTER = timedelta(hours=6)
PARTS_PER_PASS = 1000  # a pass stays short; the next one goes on
log = structlog.get_logger()


def abort_stale_multipart_uploads(store: ObjectStore, older_than: timedelta = STALE_MULTIPART_AFTER) -> list[str]:
    """Aborts the bucket's multipart uploads begun before `older_than` ago; returns their keys."""
    cutoff = datetime.now(UTC) - older_than
    aborted = []
    for page in store.client.get_paginator("list_multipart_uploads").paginate(Bucket=store.bucket):
        for upload in page.get("Uploads", []):
            if upload["Initiated"] < cutoff:
                store.client.abort_multipart_upload(Bucket=store.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted.append(upload["Key"])
    if aborted:
        log.info("storage.multipart.aborted", count=len(aborted))
    return aborted


def expire_uploads(session: Session, store: ObjectStore) -> list[str]:
    """Marks pending uploads past their expiry as expired, then deletes the parts of every upload that is no longer
    pending (expired, cancelled, or completed into a file) whose objects are still listed: those the API could not
    delete after its commit. Returns the ids of the uploads it expired.

    Uploads that a completion or a new part has locked are skipped until the next pass; a part is then recorded only
    if its upload is still pending (`app.api.uploads.service.record_part`), so no part can appear after its upload
    ended and be missed.
    """
    expired = list(
        session.scalars(
            select(Upload)
            .where(Upload.status == "pending", Upload.expires_at <= datetime.now(UTC))
            .with_for_update(skip_locked=True)
        )
    )
    for upload in expired:
        upload.status = "expired"
    session.flush()
    ended_parts = session.execute(
        select(UploadPart.id, UploadPart.storage_key)
        .join(Upload, UploadPart.upload_id == Upload.id)
        .where(Upload.status != "pending")
        .limit(PARTS_PER_PASS)
    ).all()
    for _, key in ended_parts:
        store.delete(key)
    if ended_parts:
        session.execute(delete(UploadPart).where(UploadPart.id.in_([part_id for part_id, _ in ended_parts])))
        log.info("storage.upload_parts.deleted", count=len(ended_parts))
    return [upload.id for upload in expired]


def leftovers_of_ended_jobs(session: Session, store: ObjectStore) -> list[str]:
    """Deletes the training states of ended jobs, the adapters of failed or cancelled ones and the checkpoints
    nobody may use; returns the prefixes deleted. A succeeded job's adapter is its model's (deleting the model
    deletes it).

    Only folders that exist are looked at, so a pass costs a listing per organisation, not one per job.
    """
    deleted = []
    for organization_id in session.scalars(select(Organization.id)):
        for folder_of, ended in (
            (training_states_prefix, FINISHED),
            (adapter_prefix, (Status.FAILED, Status.CANCELLED)),
        ):
            job_ids = list(store.subfolders(folder_of(organization_id, "")))
            if not job_ids:
                continue
            query = select(FineTuningJob.id).where(FineTuningJob.id.in_(job_ids), FineTuningJob.status.in_(ended))
            for job_id in session.scalars(query):
                store.delete_prefix(folder_of(organization_id, job_id))
                deleted.append(folder_of(organization_id, job_id))
        deleted += _unservable_checkpoints(session, store, organization_id)
    if deleted:
        log.info("storage.job_leftovers.deleted", count=len(deleted))
    return deleted


def _unservable_checkpoints(session: Session, store: ObjectStore, organization_id: str) -> list[str]:
    """Deletes the checkpoints of the organisation's failed or cancelled jobs and of its deleted models (what
    `app.ml.models` no longer resolves); returns their folders."""
    job_ids = list(store.subfolders(checkpoints_prefix(organization_id, "")))
    if not job_ids:
        return []
    model_deleted = select(FineTunedModel.id).where(FineTunedModel.job_id == FineTuningJob.id, FineTunedModel.deleted)
    query = select(FineTuningJob.id).where(
        FineTuningJob.id.in_(job_ids),
        FineTuningJob.status.in_((Status.FAILED, Status.CANCELLED)) | model_deleted.exists(),
    )
    deleted = []
    for job_id in session.scalars(query):
        store.delete_prefix(checkpoints_prefix(organization_id, job_id))
        deleted.append(checkpoints_prefix(organization_id, job_id))
    return deleted


def missing_objects(session: Session, store: ObjectStore) -> list[str]:
    """Rows whose object is gone: processed files without their JSONL, live models without their adapter, base
    models without their weights, succeeded exports without their tar."""
    missing = []
    for file_id, key in session.execute(select(StoredFile.id, StoredFile.storage_key)):
        if not store.exists(key):
            missing.append(f"file {file_id}: {key}")
    models = session.execute(select(FineTunedModel.id, FineTunedModel.adapter_prefix).where(~FineTunedModel.deleted))
    for model_id, prefix in models:
        if next(iter(store.list_keys(prefix.rstrip("/") + "/")), None) is None:
            missing.append(f"model {model_id}: {prefix}")
    for base_id, prefix in session.execute(select(BaseModelRecord.id, BaseModelRecord.weights_prefix)):
        if not store.exists(f"{prefix}/config.json"):
            missing.append(f"base model {base_id}: {prefix}")
    exports = session.execute(select(ModelExport.id, ModelExport.storage_key).where(ModelExport.status == "succeeded"))
    for export_id, tar in exports:
        if tar is None or not store.exists(tar):
            missing.append(f"export {export_id}: {tar}")
    return missing
