"""File objects as OpenAI shapes them."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from app.api.files.report import FAILED, PENDING, READY, ReportPart
from app.core.tables import StoredFile
from app.core.timestamps import unix


class FilePublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None
    expires_at: int | None = None

    @classmethod
    def of(cls, row: StoredFile) -> "FilePublic":
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=unix(row.created_at) or 0,
            filename=row.filename,
            purpose=row.purpose,
            status=row.status,
            status_details=row.status_details,
        )


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class FileReport(BaseModel):
    """A file's data report (extension): what the structural profile found (`counts`, `format`, `warnings`,
    duplicates, conflicting targets, answer shape) beside these fields, and `tokens`, the counts under one base
    model's tokenizer. Reports are computed in the background: until both parts are, `status` is `pending` (HTTP
    202) and only the parts ready so far are present; ask again in a few seconds. `failed` comes with `error`."""

    model_config = ConfigDict(extra="allow")
    object: Literal["file.report"] = "file.report"
    file_id: str
    status: Literal["pending", "ready", "failed"]
    tokens: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @classmethod
    def of(cls, file_id: str, structure: ReportPart, tokens: ReportPart) -> "FileReport":
        parts = (structure, tokens)
        failed = next((part for part in parts if part.status == FAILED), None)
        status = FAILED if failed else PENDING if any(part.status == PENDING for part in parts) else READY
        body: dict[str, Any] = dict(structure.body or {}) if structure.status == READY else {}
        body["tokens"] = tokens.body if tokens.status == READY else None
        if failed is not None and failed.body:
            body["error"] = failed.body.get("error")
        return cls.model_validate({**body, "file_id": file_id, "status": status})
