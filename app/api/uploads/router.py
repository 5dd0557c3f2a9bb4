"""/v1/uploads"""

from functools import partial

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.api import quotas
from app.api.deps import OrgDep, SessionDep, SettingsDep, StoreDep
from app.api.files import report_runs
from app.api.files.form_stream import stream_form
from app.api.files.validation_process import validation
from app.api.uploads import service
from app.api.uploads.schemas import UploadComplete, UploadCreate, UploadPartPublic, UploadPublic
from app.core import ids
from app.core.db import after_rollback
from app.core.errors import InvalidRequest
from app.core.metrics import UPLOAD_BYTES

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])
_PART_BYTES = UPLOAD_BYTES.labels("upload_part")


@router.post("", response_model=UploadPublic)
def create_upload(body: UploadCreate, org: OrgDep, session: SessionDep, settings: SettingsDep) -> UploadPublic:
    """Start an upload of `bytes` bytes; send its parts, then complete it to get a file."""
    quotas.check_new_upload(session, org.id, settings, body.bytes)
    return UploadPublic.of(service.create_upload(session, org, body, settings.max_upload_bytes))


@router.post("/{upload_id}/parts", response_model=UploadPartPublic)
async def add_part(
    upload_id: str, request: Request, org: OrgDep, session: SessionDep, store: StoreDep
) -> UploadPartPublic:
    """Add a part (multipart field `data`); parts are stored as they stream in and checked on completion."""
    upload = service.pending_upload(session, org, upload_id)
    room = upload.bytes - service.stored_bytes(session, upload)
    part_id = ids.new_id("part")
    writer = store.writer(service.part_key(upload, part_id))
    received = 0

    def write(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)
        _PART_BYTES.inc(len(chunk))
        if received > room:
            raise InvalidRequest(f"The parts would exceed the upload's declared {upload.bytes} bytes", param="data")
        writer.write(chunk)

    try:
        form = await stream_form(request, "data", lambda chunk: run_in_threadpool(write, chunk))
        if not form.file_seen:
            raise InvalidRequest("Missing the multipart field 'data'", param="data")
        await run_in_threadpool(writer.close)
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise
    after_rollback(session, partial(store.delete, writer.key))  # the part's object is only kept with its row
    # In a thread: recording waits for the upload's row lock, which a completion holds while it assembles the file.
    part = await run_in_threadpool(service.record_part, session, upload, part_id, received, writer.key)
    return UploadPartPublic.of(part)


@router.post("/{upload_id}/complete", response_model=UploadPublic)
def complete_upload(
    upload_id: str, body: UploadComplete, org: OrgDep, session: SessionDep, store: StoreDep, settings: SettingsDep
) -> UploadPublic:
    """Assemble the parts in the order of `part_ids` into a file, validating it as one dataset; the parts are deleted
    once the file is stored."""
    with validation(settings, org.id) as validator:
        upload, file = service.complete_upload(session, store, org, upload_id, body, validator)
    report_runs.after_recording(session, settings, file)
    return UploadPublic.of(upload, file)


@router.post("/{upload_id}/cancel", response_model=UploadPublic)
def cancel_upload(upload_id: str, org: OrgDep, session: SessionDep, store: StoreDep) -> UploadPublic:
    """Cancel a pending upload; its parts are deleted."""
    return UploadPublic.of(service.cancel_upload(session, store, org, upload_id))
