"""Evaluation requests and responses."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.tables import Evaluation
from app.core.timestamps import unix


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="the model to evaluate: a base model, a fine-tuned model or a checkpoint")
    file: str = Field(
        description="a fine-tune file of chat or prompt/completion examples; the last answers are targets"
    )
    baseline: str | None = Field(default=None, description="the model compared against; default: the model's base")
    max_examples: int = Field(default=50, ge=1, le=1000, description="the first examples of the file answered")
    max_tokens: int = Field(default=256, ge=1, le=4096, description="the longest answer generated")


class EvaluationPublic(BaseModel):
    id: str
    object: Literal["evaluation"] = "evaluation"
    created_at: int
    finished_at: int | None
    model: str
    baseline: str
    file: str
    max_examples: int
    max_tokens: int
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    report: dict[str, Any] | None
    error: dict[str, Any] | None

    @classmethod
    def of(cls, row: Evaluation) -> "EvaluationPublic":
        return cls(
            id=row.id,
            created_at=unix(row.created_at) or 0,
            finished_at=unix(row.finished_at),
            model=row.model,
            baseline=row.baseline,
            file=row.file_id,
            max_examples=row.max_examples,
            max_tokens=row.max_tokens,
            status=row.status,
            report=row.report,
            error=row.error,
        )
