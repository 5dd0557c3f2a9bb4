"""The usage page's rows: a day's completion tokens by model, trained tokens by base model, and stored bytes."""

import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.api.usage.schemas import CompletionsResult, FineTuningResult, StorageResult
from app.api.usage.service import DAY, MAX_BUCKETS, UsageQuery, usage_page
from app.core import usage


@dataclass(frozen=True)
class UsageRow:
    model: str
    requests: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    jobs: int | None = None
    trained_tokens: int | None = None


@dataclass(frozen=True)
class DayUsage:
    day: int  # Unix time of the UTC day's start
    stored_bytes: int
    rows: list[UsageRow]


def recent_usage(session: Session, organization_id: str) -> list[DayUsage]:
    """The last 31 UTC days, newest first."""
    start = (int(time.time()) // DAY - MAX_BUCKETS + 1) * DAY
    pages = {
        kind: usage_page(
            session, organization_id, kind, UsageQuery(start, None, "1d", [] if kind == usage.STORAGE else ["model"],
                                                       MAX_BUCKETS, [], None),
        ).data
        for kind in (usage.COMPLETIONS, usage.FINE_TUNING, usage.STORAGE)
    }  # fmt: skip
    days = []
    for completions, fine_tuning, storage in zip(*pages.values(), strict=True):
        rows = [
            UsageRow(r.model or "", r.num_model_requests, r.input_tokens, r.output_tokens)
            for r in completions.results
            if isinstance(r, CompletionsResult)
        ] + [
            UsageRow(r.model or "", jobs=r.num_jobs, trained_tokens=r.trained_tokens)
            for r in fine_tuning.results
            if isinstance(r, FineTuningResult)
        ]
        stored = next((r.usage_bytes for r in storage.results if isinstance(r, StorageResult)), 0)
        days.append(DayUsage(storage.start_time, stored, rows))
    return days[::-1]
