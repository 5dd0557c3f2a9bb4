"""/v1/files"""

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.deps import OrgDep, SessionDep, SettingsDep, StoreDep
from app.errors import InvalidRequest, PayloadTooLarge
from app.files import service
from app.files.schemas import FileDeleted, FilePublic
from app.pagination import list_body

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
async def upload_file(request: Request, org: OrgDep, session: SessionDep, store: StoreDep, settings: SettingsDep):
    """Upload a JSONL dataset (multipart fields `file` and `purpose`); it is checked line by line."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > settings.max_upload_bytes:
        raise PayloadTooLarge(f"The file is larger than the limit of {settings.max_upload_bytes} bytes.")
    async with request.form(max_files=1, max_fields=10) as form:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("Missing the multipart field 'file'", param="file")
        if not isinstance(purpose, str) or not purpose:
            raise InvalidRequest("Missing the multipart field 'purpose'", param="purpose")
        row = await run_in_threadpool(
            service.create_file,
            session,
            store,
            org,
            upload.file,
            upload.filename or "upload.jsonl",
            purpose,
            settings.max_upload_bytes,
        )
    try:
        session.commit()
    except Exception:
        store.delete(row.storage_key)
        raise
    return FilePublic.of(row)


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
