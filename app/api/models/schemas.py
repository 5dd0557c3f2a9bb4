"""Model objects as OpenAI shapes them."""

from typing import Any, Literal

from pydantic import BaseModel

from app.core.tables import ModelExport
from app.core.timestamps import unix
from app.ml.models import ModelRef


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Base models only: whose chat template prompts are written with: "model" (its own), "given" (when it was
    # added) or "default" (it had none: Loraport's default, which ends each answer with the model's EOS token).
    chat_template: str | None = None

    @classmethod
    def of(cls, ref: ModelRef) -> "ModelPublic":
        return cls(id=ref.id, created=ref.created, owned_by=ref.owned_by, chat_template=ref.chat_template)


class ModelList(BaseModel):
    """Every model the organisation may use, in one answer (OpenAI's model list has no pages)."""

    object: Literal["list"] = "list"
    data: list[ModelPublic]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


class ModelExportPublic(BaseModel):
    """A merged export of a fine-tuned model: `bytes` is the tar's size once it has succeeded."""

    id: str
    object: Literal["model.export"] = "model.export"
    model: str
    status: Literal["queued", "running", "succeeded", "failed"]
    bytes: int | None
    error: dict[str, Any] | None
    created_at: int
    finished_at: int | None

    @classmethod
    def of(cls, row: ModelExport) -> "ModelExportPublic":
        return cls(
            id=row.id,
            model=row.model,
            status=row.status,
            bytes=row.bytes,
            error=row.error,
            created_at=unix(row.created_at) or 0,
            finished_at=unix(row.finished_at),
        )
