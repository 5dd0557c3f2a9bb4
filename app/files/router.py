"""/v1/files"""

from functools import partial
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, BackgroundTasks, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from app import idempotency, ids
from app.base_models.registry import UnknownBaseModel
from app.config import Settings
from app.datasets.validation import DatasetValidator
from app.db import transaction
from app.deps import OrgDep, SessionDep, SettingsDep, StoreDep
from app.errors import DatasetRejected, InvalidRequest, ModelNotFound, PayloadTooLarge
from app.files import report, service
from app.files.form_stream import stream_form
from app.files.ingest import FileIngest
from app.files.schemas import FileDeleted, FilePublic
from app.idempotency import IdempotencyKey
from app.pagination import list_body
from app.storage import file_key, store_for
from app.tables import StoredFile

router = APIRouter(prefix="/v1/files", tags=["files"])

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


@router.post("", response_model=FilePublic, openapi_extra=_UPLOAD_FORM)
async def upload_file(
    request: Request,
    org: OrgDep,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    idempotency_key: IdempotencyKey = None,
) -> FilePublic:
    """Upload a JSONL dataset (multipart fields `file` and `purpose`), checked line by line as it streams in."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > settings.max_upload_bytes:
        raise PayloadTooLarge(f"The file is larger than the limit of {settings.max_upload_bytes} bytes.")
    file_id = ids.file_id()
    storage_key = file_key(org.id, file_id)
    ingest = FileIngest(
        store.writer(storage_key), settings.max_upload_bytes, DatasetValidator(max_line_bytes=settings.max_line_bytes)
    )
    try:
        form = await stream_form(request, "file", partial(run_in_threadpool, ingest.feed))
        if not form.file_seen:
            raise InvalidRequest("Missing the multipart field 'file'", param="file")
        purpose = service.check_purpose(form.fields.get("purpose"))
        ingested = await run_in_threadpool(ingest.finish)
    except BaseException:
        await run_in_threadpool(ingest.abort)
        raise
    if not ingested.validation.ok:
        raise DatasetRejected(ingested.validation.summary(), ingested.validation.as_dict())
    filename = form.filename or "upload.jsonl"
    try:
        row = service.record_file(session, org, file_id, storage_key, filename, purpose, ingested)
        answer = FilePublic.of(row)
        if idempotency_key:
            digest = idempotency.request_hash("files.create", purpose, filename, ingested.sha256)
            earlier = idempotency.replay(session, org, idempotency_key, "POST /v1/files", digest)
            if earlier is not None:
                session.rollback()
                await run_in_threadpool(store.delete, storage_key)
                return FilePublic(**earlier)
            idempotency.remember(session, org, idempotency_key, "POST /v1/files", digest, answer.model_dump())
        session.commit()
    except BaseException as error:  # the object is only kept with the row that points at it
        await run_in_threadpool(store.delete, storage_key)
        if idempotency_key and isinstance(error, IntegrityError):
            raise idempotency.in_flight(idempotency_key) from None
        raise
    background.add_task(_report_after_upload, settings, file_id)
    return answer


def _report_after_upload(settings: Settings, file_id: str) -> None:
    """Computes the data report once the client has its answer, so job creation finds it ready."""
    with transaction(settings.require("database_url")) as session:
        report.structural_report(session, store_for(settings), session.get_one(StoredFile, file_id))


@router.get("/{file_id}/report")
def file_report(
    file_id: str,
    request: Request,
    org: OrgDep,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    model: str | None = None,
) -> dict:
    """The data report: counts, duplicates, conflicting targets, answer shape, short targets, and token
    counts under `model`'s tokenizer (the default base model if not given)."""
    row = service.get_file(session, org, file_id)
    registry = request.app.state.registry
    model_id = model or settings.default_base_model
    try:
        registry.get(model_id)
    except UnknownBaseModel:
        raise ModelNotFound(model_id) from None
    body = {"object": "file.report", "file_id": row.id, **report.structural_report(session, store, row)}
    body["tokens"] = report.token_report(session, store, registry, row, model_id)
    session.commit()
    return body


@router.get("")
def list_files(
    org: OrgDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> dict:
    rows, has_more = service.list_files(session, org, after, limit, purpose, newest_first=order == "desc")
    return list_body([FilePublic.of(row).model_dump() for row in rows], has_more)


@router.get("/{file_id}", response_model=FilePublic)
def retrieve_file(file_id: str, org: OrgDep, session: SessionDep) -> FilePublic:
    return FilePublic.of(service.get_file(session, org, file_id))


@router.get("/{file_id}/content")
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
    storage_key = service.delete_file(session, org, file_id)
    session.commit()
    store.delete(storage_key)
    return FileDeleted(id=file_id)
