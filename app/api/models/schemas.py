"""Model objects as OpenAI shapes them."""

from typing import Literal

from pydantic import BaseModel

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
