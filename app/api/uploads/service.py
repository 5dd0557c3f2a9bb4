"""Uploads: create, add parts (stored as they come), complete (validated into a file) or cancel."""

import hashlib
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api.files import service as files
from app.api.files.ingest import FileIngest, Ingested
from app.api.files.names import safe_filename
from app.api.files.validation_process import ValidationProcess
from app.api.uploads.schemas import UploadComplete, UploadCreate
from app.core import ids
from app.core.db import after_commit, after_rollback
from app.core.errors import DatasetRejected, InvalidRequest, PayloadTooLarge
from app.core.scoped import get_owned
from app.core.storage import ObjectStore, file_key
from app.core.tables import Organization, StoredFile, Upload, UploadPart

_DEFAULT_LIFETIME = timedelta(hours=1)  # as OpenAI's uploads


def create_upload(session: Session, org: Organization, body: UploadCreate, max_bytes: int) -> Upload:
    purpose = files.check_purpose(body.purpose)
    if body.bytes > max_bytes:
        raise PayloadTooLarge(f"The upload of {body.bytes} bytes is larger than the limit of {max_bytes}.")
    lifetime = timedelta(seconds=body.expires_after.seconds) if body.expires_after else _DEFAULT_LIFETIME
    upload = Upload(
        id=ids.new_id("upload"),
        organization_id=org.id,
        filename=safe_filename(body.filename),
        purpose=purpose,
        bytes=body.bytes,
        mime_type=body.mime_type,
        status="pending",
        expires_at=datetime.now(UTC) + lifetime,
    )
    session.add(upload)
    session.flush()
    return upload


def get_upload(session: Session, org: Organization, upload_id: str) -> Upload:
    return get_owned(session, Upload, org.id, upload_id, "upload")


def pending_upload(session: Session, org: Organization, upload_id: str, lock: bool = False) -> Upload:
    """The upload if it is still pending. With `lock`, its row stays locked (SELECT … FOR UPDATE) until the
    transaction ends: completing, cancelling and recording a part of one upload then take turns, so none of them
    decides on a list of parts or a status that another is about to change."""
    upload = get_upload(session, org, upload_id)
    if lock:
        session.refresh(upload, with_for_update=True)
    _check_pending(upload)
    return upload


def _check_pending(upload: Upload) -> None:
    if upload.status == "pending" and upload.expires_at <= datetime.now(UTC):
        upload.status = "expired"
    if upload.status != "pending":
        raise InvalidRequest(f"Upload '{upload.id}' is {upload.status}; only a pending upload takes parts")


def stored_bytes(session: Session, upload: Upload) -> int:
    total = select(func.coalesce(func.sum(UploadPart.bytes), 0)).where(UploadPart.upload_id == upload.id)
    return session.execute(total).scalar_one()


def part_key(upload: Upload, part_id: str) -> str:
    return f"orgs/{upload.organization_id}/uploads/{upload.id}/{part_id}"


def record_part(session: Session, upload: Upload, part_id: str, received: int, key: str) -> UploadPart:
    """The row of a part whose `received` bytes are stored under `key`, checked again with the upload locked: while
    the part streamed, the upload may have been completed or cancelled, or other parts may have filled it."""
    session.refresh(upload, with_for_update=True)
    _check_pending(upload)
    if stored_bytes(session, upload) + received > upload.bytes:
        raise InvalidRequest(f"The parts would exceed the upload's declared {upload.bytes} bytes", param="data")
    part = UploadPart(id=part_id, upload_id=upload.id, bytes=received, storage_key=key)
    session.add(part)
    session.flush()
    return part


def complete_upload(
    session: Session,
    store: ObjectStore,
    org: Organization,
    upload_id: str,
    body: UploadComplete,
    validator: ValidationProcess,
) -> tuple[Upload, StoredFile]:
    """Streams the parts, in the order given, through validation into one file."""
    upload = pending_upload(session, org, upload_id, lock=True)
    parts = {part.id: part for part in session.scalars(select(UploadPart).where(UploadPart.upload_id == upload.id))}
    unknown = [part_id for part_id in body.part_ids if part_id not in parts]
    if unknown or len(set(body.part_ids)) != len(body.part_ids):
        raise InvalidRequest(f"part_ids must list parts of this upload once each; unknown: {unknown}", param="part_ids")
    total = sum(parts[part_id].bytes for part_id in body.part_ids)
    if total != upload.bytes:
        raise InvalidRequest(
            f"The parts hold {total} bytes but the upload was created for {upload.bytes}", param="part_ids"
        )
    file_id = ids.file_id()
    key = file_key(org.id, file_id)
    ingested = _assemble(store, [parts[part_id].storage_key for part_id in body.part_ids], key, body.md5, validator)
    if not ingested.validation.ok:
        raise DatasetRejected(ingested.validation.summary(), ingested.validation.as_dict())
    after_rollback(session, partial(store.delete, key))  # the file's object is only kept with its row
    received = files.ReceivedFile(file_id, key, upload.filename, upload.purpose, ingested)
    row = files.record_file(session, org, received)
    upload.status, upload.file_id = "completed", row.id
    session.flush()
    _delete_parts_after_commit(session, store, upload)
    return upload, row


def cancel_upload(session: Session, store: ObjectStore, org: Organization, upload_id: str) -> Upload:
    """Cancels a pending upload; its parts' objects are deleted once that is committed."""
    upload = pending_upload(session, org, upload_id, lock=True)
    upload.status = "cancelled"
    session.flush()
    _delete_parts_after_commit(session, store, upload)
    return upload


def _delete_parts_after_commit(session: Session, store: ObjectStore, upload: Upload) -> None:
    """Deletes the upload's parts from S3 once its new status is committed: until then, a completion may still
    need them."""
    for key in session.scalars(select(UploadPart.storage_key).where(UploadPart.upload_id == upload.id)):
        after_commit(session, partial(store.delete, key))


def _assemble(
    store: ObjectStore, part_keys: list[str], key: str, md5: str | None, validator: ValidationProcess
) -> Ingested:
    ingest = FileIngest(store.writer(key), max_bytes=2**63, validator=validator)
    checksum = hashlib.md5(usedforsecurity=False)
    try:
        for part in part_keys:
            for chunk in store.open(part):
                checksum.update(chunk)
                ingest.feed(chunk)
        if md5 and md5.lower() != checksum.hexdigest():
            raise InvalidRequest(f"The parts' MD5 is {checksum.hexdigest()}, not {md5}", param="md5")
        return ingest.finish()
    except BaseException:
        ingest.abort()
        raise
