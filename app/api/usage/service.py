"""An organisation's usage as OpenAI's usage API pages it: day buckets from `start_time` to `end_time`, `limit` of
them a page, each with one result (or one per model with `group_by=model`)."""

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.orm import Session

from app.api.usage.schemas import Bucket, CompletionsResult, FineTuningResult, Result, StorageResult, UsagePage
from app.core import usage
from app.core.errors import InvalidRequest
from app.core.usage import DayOfUsage

DAY = 86_400
MAX_BUCKETS = 31
_CURSOR = "day_"


@dataclass(frozen=True)
class UsageQuery:
    start_time: int
    end_time: int | None
    bucket_width: str
    group_by: Sequence[str]
    limit: int
    models: Sequence[str]
    page: str | None


def usage_page(session: Session, organization_id: str, kind: str, query: UsageQuery) -> UsagePage:
    """One page of the organisation's `kind` of usage (`usage.COMPLETIONS`, `FINE_TUNING` or `STORAGE`)."""
    first, end = _days(query)
    if query.group_by and (kind == usage.STORAGE or set(query.group_by) != {"model"}):
        allowed = "nothing" if kind == usage.STORAGE else "model"
        raise InvalidRequest(
            f"Usage can be grouped by {allowed} here, not {', '.join(query.group_by)}", param="group_by"
        )
    days = [first + timedelta(days=i) for i in range(min(query.limit, (end - first).days))]
    rows = usage.days(session, organization_id, kind, days[0], days[-1], query.models) if days else []
    by_day: dict[date, list[DayOfUsage]] = defaultdict(list)
    for row in rows:
        by_day[row.day].append(row)
    results = _storage_results(session, organization_id, days, by_day) if kind == usage.STORAGE else None
    buckets = [
        Bucket(
            start_time=_unix(day),
            end_time=_unix(day) + DAY,
            results=results[day] if results else _results(kind, by_day[day], grouped=bool(query.group_by)),
        )
        for day in days
    ]
    following = first + timedelta(days=len(days))
    has_more = following < end
    return UsagePage(data=buckets, has_more=has_more, next_page=f"{_CURSOR}{_unix(following)}" if has_more else None)


def _days(query: UsageQuery) -> tuple[date, date]:
    """The first day of this page and the day after the last of the range: whole UTC days, the one that holds
    `start_time` first (usage is kept per day)."""
    if query.bucket_width != "1d":
        raise InvalidRequest("Usage is kept per UTC day: bucket_width must be 1d", param="bucket_width")
    if not 1 <= query.limit <= MAX_BUCKETS:
        raise InvalidRequest(f"limit must be between 1 and {MAX_BUCKETS} buckets", param="limit")
    end_time = int(time.time()) if query.end_time is None else query.end_time
    if query.start_time < 0 or end_time <= query.start_time:
        raise InvalidRequest("start_time must be a Unix time before end_time", param="start_time")
    start, end = _day(query.start_time), _day(end_time - 1) + timedelta(days=1)
    if query.page is None:
        return start, end
    page_day = _day(_cursor_time(query.page))
    if not start <= page_day < end:
        raise InvalidRequest(
            "page is not a page of this range: pass the next_page of the previous answer", param="page"
        )
    return page_day, end


def _cursor_time(page: str) -> int:
    if page.startswith(_CURSOR) and page[len(_CURSOR) :].isdigit():
        return int(page[len(_CURSOR) :])
    raise InvalidRequest("page is not a cursor this API gave: pass the next_page of the previous answer", param="page")


def _results(kind: str, rows: list[DayOfUsage], grouped: bool) -> list[Result]:
    """One result per model when grouped; otherwise one for the day, or none on a day without usage."""
    groups: dict[str | None, list[DayOfUsage]] = defaultdict(list)
    for row in rows:
        groups[row.model if grouped else None].append(row)
    make: Callable[[str | None, list[DayOfUsage]], Result] = _completions if kind == usage.COMPLETIONS else _fine_tuning
    return [make(model, group) for model, group in groups.items()]


def _completions(model: str | None, rows: list[DayOfUsage]) -> Result:
    return CompletionsResult(
        input_tokens=sum(row.input_tokens for row in rows),
        output_tokens=sum(row.output_tokens for row in rows),
        num_model_requests=sum(row.requests for row in rows),
        model=model,
    )


def _fine_tuning(model: str | None, rows: list[DayOfUsage]) -> Result:
    return FineTuningResult(
        trained_tokens=sum(row.trained_tokens for row in rows), num_jobs=sum(row.requests for row in rows), model=model
    )


def _storage_results(
    session: Session, organization_id: str, days: list[date], by_day: dict[date, list[DayOfUsage]]
) -> dict[date, list[Result]]:
    """Each day's stored bytes at its end: what was stored before the page, plus every day's changes since."""
    stored = usage.stored_before(session, organization_id, days[0]) if days else 0
    results: dict[date, list[Result]] = {}
    for day in days:
        stored += sum(row.stored_bytes for row in by_day[day])
        results[day] = [StorageResult(usage_bytes=stored)]
    return results


def _day(unix_time: int) -> date:
    return datetime.fromtimestamp(unix_time, UTC).date()


def _unix(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
