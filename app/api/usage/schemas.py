"""OpenAI's usage API shapes: a page of time buckets, each with its results (one per model when grouped)."""

from typing import Literal

from pydantic import BaseModel


class CompletionsResult(BaseModel):
    object: Literal["organization.usage.completions.result"] = "organization.usage.completions.result"
    input_tokens: int
    output_tokens: int
    num_model_requests: int
    input_cached_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    model: str | None = None
    project_id: None = None
    user_id: None = None
    api_key_id: None = None
    batch: None = None
    service_tier: None = None


class FineTuningResult(BaseModel):
    """An extension, shaped like OpenAI's results: tokens trained by jobs that succeeded (refits and DPO included)."""

    object: Literal["organization.usage.fine_tuning.result"] = "organization.usage.fine_tuning.result"
    trained_tokens: int
    num_jobs: int
    model: str | None = None  # the base model, when grouped by model


class StorageResult(BaseModel):
    """An extension: the bytes of the organisation's files at the end of the bucket."""

    object: Literal["organization.usage.storage.result"] = "organization.usage.storage.result"
    usage_bytes: int


Result = CompletionsResult | FineTuningResult | StorageResult


class Bucket(BaseModel):
    object: Literal["bucket"] = "bucket"
    start_time: int
    end_time: int
    results: list[Result]


class UsagePage(BaseModel):
    object: Literal["page"] = "page"
    data: list[Bucket]
    has_more: bool
    next_page: str | None
