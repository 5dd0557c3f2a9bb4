"""Upload and part objects as OpenAI shapes them."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.files.schemas import FilePublic
from app.core.tables import StoredFile, Upload, UploadPart
from app.core.timestamps import unix


class ExpiresAfter(BaseModel):
    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=30 * 24 * 3600)


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bytes: int = Field(ge=1)
    filename: str = Field(min_length=1, max_length=512)
    mime_type: str = Field(max_length=128)
    purpose: str
    expires_after: ExpiresAfter | None = None


class UploadComplete(BaseModel):
    model_config = ConfigDict(extra="forbid")
    part_ids: list[str] = Field(min_length=1)
    md5: str | None = None


class UploadPublic(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: str
    file: FilePublic | None = None

    @classmethod
    def of(cls, row: Upload, file: StoredFile | None = None) -> "UploadPublic":
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=unix(row.created_at) or 0,
            expires_at=unix(row.expires_at) or 0,
            filename=row.filename,
            purpose=row.purpose,
            status=row.status,
            file=FilePublic.of(file) if file else None,
        )


class UploadPartPublic(BaseModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str

    @classmethod
    def of(cls, row: UploadPart) -> "UploadPartPublic":
        return cls(id=row.id, created_at=unix(row.created_at) or 0, upload_id=row.upload_id)
