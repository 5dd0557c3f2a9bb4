"""Text completion requests and replies in OpenAI's shapes."""

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.api.chat.schemas import SamplingFields, Usage


class CompletionCreate(SamplingFields):
    # Token-id prompts and batches of token ids are not offered: a clear 400 rather than a surprise.
    prompt: str | list[str] = Field(min_length=1)
    echo: Literal[False] = False
    best_of: Literal[1] | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    suffix: None = None

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str
    logprobs: dict[str, Any] | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None
