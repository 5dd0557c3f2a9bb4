"""/v1/files"""

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, BackgroundTasks, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from app.api import idempotency
from app.api.deps import OrgDep, SessionDep, SettingsDep, StoreDep
from app.api.files import report, service
from app.api.files.schemas import FileDeleted, FilePublic
from app.api.files.upload import receive_upload
from app.api.idempotency import IdempotencyKey
from app.api.pagination import list_body
from app.core.db import transaction
from app.core.errors import ModelNotFound
from app.core.settings import Settings
from app.core.storage import store_for
from app.core.tables import StoredFile
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
    received = await receive_upload(request, store, settings, org)
    try:
        row = service.record_file(session, org, received)
        answer = FilePublic.of(row)
        if idempotency_key:
            digest = idempotency.request_hash("files.create", received.purpose, received.filename, row.sha256)
            earlier = idempotency.replay(session, org, idempotency_key, _CREATE, digest)
            if earlier is not None:
                session.rollback()
                await run_in_threadpool(store.delete, received.storage_key)
                return FilePublic(**earlier)
            idempotency.remember(session, org, idempotency_key, _CREATE, digest, answer.model_dump())
        session.commit()
    except BaseException as error:  # the object is only kept with the row that points at it
        await run_in_threadpool(store.delete, received.storage_key)
        if idempotency_key and isinstance(error, IntegrityError):
            raise idempotency.in_flight(idempotency_key) from None
        raise
    background.add_task(_report_after_upload, settings, row.id)
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
