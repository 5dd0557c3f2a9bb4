"""/v1/files"""

from functools import partial
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api import idempotency, quotas
from app.api.deps import OrgDep, RegistryDep, SessionDep, SettingsDep, StoreDep
from app.api.files import report_runs, service
from app.api.files.schemas import FileDeleted, FilePublic, FileReport
from app.api.files.service import ReceivedFile
from app.api.files.upload import receive_upload
from app.api.idempotency import IdempotencyKey
from app.api.pagination import ListPage, list_page
from app.core.db import after_commit, after_rollback
from app.core.errors import ModelNotFound
from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.core.tables import Organization
from app.ml.base_models.registry import UnknownBaseModel

router = APIRouter(prefix="/v1/files", tags=["files"])
_CREATE = "POST /v1/files"

_UPLOAD_FORM = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string"},
                    },
                }
            }
        }
    }
}

_FILE_BYTES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file's bytes, as uploaded",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post("", response_model=FilePublic, openapi_extra=_UPLOAD_FORM)
async def upload_file(
    request: Request,
    org: OrgDep,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> FilePublic:
    """Upload a JSONL dataset (multipart fields `file` and `purpose`), checked line by line as it streams in."""
    received = await receive_upload(request, store, settings, org)
    # In a thread: the quota check waits for the organisation's lock, which another upload of it may hold until its
    # request commits; waiting on the event loop would stop that request from ever committing.
    return await run_in_threadpool(_record_upload, session, store, settings, org, received, idempotency_key)


def _record_upload(
    session: Session,
    store: ObjectStore,
    settings: Settings,
    org: Organization,
    received: ReceivedFile,
    idempotency_key: str | None,
) -> FilePublic:
    forget = partial(store.delete, received.storage_key)
    after_rollback(session, forget)  # the object is only kept with the row that points at it
    digest = idempotency.request_hash("files.create", received.purpose, received.filename, received.ingested.sha256)
    if idempotency_key:
        earlier = idempotency.replay(session, org, idempotency_key, _CREATE, digest)
        if earlier is not None:  # a retry: the first upload's file, and nothing kept of this one
            after_commit(session, forget)
            return FilePublic(**earlier)
    quotas.check_stored_bytes(session, org.id, settings, received.ingested.bytes)
    row = service.record_file(session, org, received)
    answer = FilePublic.of(row)
    if idempotency_key:
        idempotency.remember(session, org, idempotency_key, _CREATE, digest, answer.model_dump())
    report_runs.after_recording(session, settings, row)
    return answer


@router.get("/{file_id}/report", response_model=FileReport, responses={202: {"description": "Not computed yet"}})
def file_report(
    file_id: str,
    response: Response,
    org: OrgDep,
    session: SessionDep,
    settings: SettingsDep,
    registry: RegistryDep,
    model: str | None = None,
) -> FileReport:
    """The data report: counts, duplicates, conflicting targets, answer shape, short targets, and token
    counts under `model`'s tokenizer (the default base model if not given). Computed once, in the background:
    202 with `status` `pending` until it is ready; ask again."""
    row = service.get_file(session, org, file_id)
    model_id = model or settings.default_base_model
    try:
        registry.get(model_id)
    except UnknownBaseModel:
        raise ModelNotFound(model_id) from None
    structure = report_runs.structure(session, settings, row)
    tokens = report_runs.tokens(session, settings, row, model_id)
    answer = FileReport.of(row.id, structure, tokens)
    if answer.status == "pending":
        response.status_code = 202
    return answer


@router.get("", response_model=ListPage[FilePublic])
def list_files(
    org: OrgDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> ListPage[FilePublic]:
    rows, has_more = service.list_files(session, org, after, limit, purpose, newest_first=order == "desc")
    return list_page([FilePublic.of(row) for row in rows], has_more)


@router.get("/{file_id}", response_model=FilePublic)
def retrieve_file(file_id: str, org: OrgDep, session: SessionDep) -> FilePublic:
    return FilePublic.of(service.get_file(session, org, file_id))


@router.get("/{file_id}/content", response_class=StreamingResponse, responses=_FILE_BYTES)
def file_content(file_id: str, org: OrgDep, session: SessionDep, store: StoreDep) -> StreamingResponse:
    row = service.get_file(session, org, file_id)
    return StreamingResponse(
        store.open(row.storage_key),
        media_type="application/octet-stream",
        headers={
            # RFC 6266 encoding: whatever the uploaded name holds, it cannot break the header.
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(row.filename)}",
            "Content-Length": str(row.bytes),
        },
    )


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, org: OrgDep, session: SessionDep, store: StoreDep) -> FileDeleted:
    """Delete a file; its object goes once the row's deletion is committed."""
    storage_key = service.delete_file(session, org, file_id)
    after_commit(session, partial(store.delete, storage_key))
    return FileDeleted(id=file_id)
