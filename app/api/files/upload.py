"""Receiving a multipart upload: streamed from the socket through `FileIngest` into S3 in one pass."""

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.api.files.form_stream import stream_form
from app.api.files.ingest import FileIngest
from app.api.files.service import ReceivedFile, check_purpose
from app.api.files.validation_process import ValidationProcess, validation_slots
from app.api.quotas import StorageRoom
from app.core import ids
from app.core.errors import DatasetRejected, InvalidRequest, PayloadTooLarge
from app.core.metrics import UPLOAD_BYTES
from app.core.settings import Settings
from app.core.storage import ObjectStore, file_key
from app.core.tables import Organization

_FILE_BYTES = UPLOAD_BYTES.labels("file")


async def receive_upload(request: Request, store: ObjectStore, settings: Settings, org: Organization) -> ReceivedFile:
    """Streams the `file` part to S3 while checking it; a refused or broken upload leaves no object."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > settings.max_upload_bytes:
        raise PayloadTooLarge(f"The file is larger than the limit of {settings.max_upload_bytes} bytes.")
    with validation_slots(settings).take(org.id):
        validator = await run_in_threadpool(ValidationProcess, settings)  # starting a child blocks: in a thread
        try:
            return await _receive(request, store, settings, org, validator)
        finally:
            await run_in_threadpool(validator.close)


async def _receive(
    request: Request, store: ObjectStore, settings: Settings, org: Organization, validator: ValidationProcess
) -> ReceivedFile:
    file_id = ids.file_id()
    storage_key = file_key(org.id, file_id)
    room = await run_in_threadpool(StorageRoom, settings, org.id)  # a database query: off the event loop
    ingest = FileIngest(store.writer(storage_key), settings.max_upload_bytes, validator)
    try:
        form = await stream_form(
            request,
            "file",
            lambda chunk: run_in_threadpool(ingest.feed, room.take(_received(chunk))),
            fields=("purpose",),
        )
        if not form.file_seen:
            raise InvalidRequest("Missing the multipart field 'file'", param="file")
        purpose = check_purpose(form.fields.get("purpose"))
        ingested = await run_in_threadpool(ingest.finish)
    except BaseException:
        await run_in_threadpool(ingest.abort)
        raise
    if not ingested.validation.ok:
        raise DatasetRejected(ingested.validation.summary(), ingested.validation.as_dict())
    return ReceivedFile(file_id, storage_key, form.filename or "upload.jsonl", purpose, ingested)


def _received(chunk: bytes) -> bytes:
    """Counts the chunk's bytes in `loraport_upload_bytes_total`."""
    _FILE_BYTES.inc(len(chunk))
    return chunk
