"""Model objects as OpenAI shapes them."""

from typing import Literal

from pydantic import BaseModel

from app.ml.models import ModelRef


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str

    @classmethod
    def of(cls, ref: ModelRef) -> "ModelPublic":
        return cls(id=ref.id, created=ref.created, owned_by=ref.owned_by)


class ModelList(BaseModel):
    """Every model the organisation may use, in one answer (OpenAI's model list has no pages)."""

    object: Literal["list"] = "list"
    data: list[ModelPublic]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True
