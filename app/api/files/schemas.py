"""File objects as OpenAI shapes them."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

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
    model's tokenizer."""

    model_config = ConfigDict(extra="allow")
    object: Literal["file.report"] = "file.report"
    file_id: str
    tokens: dict[str, Any]
