"""The data report of a stored file: what makes fine-tunes fail quietly, computed once, in the background, and kept.

The structural part (duplicates, conflicting targets, answer shape, short targets) is claimed when the file is
recorded; token counts are claimed per base model's tokenizer on first request. A claim is a guarded write in the
request's transaction (an UPDATE of `files.report_status`, an INSERT of a pending `file_token_stats` row), so of
concurrent first requests exactly one wins; the winner hands the computation to `app.api.files.report_runs` once
committed, and every request meanwhile answers "pending" at once, holding no connection while the file is read.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.core.tables import FileTokenStats, StoredFile

PENDING, READY, FAILED = "pending", "ready", "failed"


@dataclass(frozen=True)
class ReportPart:
    """One part of a report: `pending`, `ready` with its `body`, or `failed` with `body` = {"error": message}."""

    status: str
    body: dict[str, Any] | None = None
    claim: datetime | None = None  # set when this request claimed the computation: the caller schedules it


def new_claim() -> datetime:
    return datetime.now(UTC)


def structure(session: Session, settings: Settings, row: StoredFile) -> ReportPart:
    """The structural report, or its state; claims the computation if nobody holds it."""
    if row.report_status == READY:
        return ReportPart(READY, _stored_report(session, row.id))
    claim = new_claim()
    claimed = session.execute(
        update(StoredFile)
        .where(
            StoredFile.id == row.id,
            or_(StoredFile.report_status.is_(None), _stale(StoredFile, settings, claim)),
        )
        .values(report_status=PENDING, report_claimed_at=claim)
        .returning(StoredFile.id)
        .execution_options(synchronize_session=False)
    ).first()
    if claimed is not None:
        return ReportPart(PENDING, claim=claim)
    # Lost the claim: another request holds it, or finished between our read and our update.
    status, report = session.execute(
        select(StoredFile.report_status, StoredFile.report).where(StoredFile.id == row.id)
    ).one()
    return ReportPart(status or PENDING, report if status in (READY, FAILED) else None)


def tokens(session: Session, settings: Settings, row: StoredFile, model_id: str) -> ReportPart:
    """Token counts under `model_id`'s tokenizer, or their state; claims the computation if nobody holds it."""
    claim = new_claim()
    stale = _stale(FileTokenStats, settings, claim)
    claimed = session.execute(
        insert(FileTokenStats)
        .values(file_id=row.id, model=model_id, status=PENDING, claimed_at=claim)
        .on_conflict_do_update(
            index_elements=[FileTokenStats.file_id, FileTokenStats.model],
            set_={"status": PENDING, "claimed_at": claim},
            where=stale,
        )
        .returning(FileTokenStats.model)
    ).first()
    if claimed is not None:
        return ReportPart(PENDING, claim=claim)
    status, stats = session.execute(
        select(FileTokenStats.status, FileTokenStats.stats).where(
            FileTokenStats.file_id == row.id, FileTokenStats.model == model_id
        )
    ).one()
    return ReportPart(status, stats if status != PENDING else None)


def ready_report(session: Session, row: StoredFile) -> dict[str, Any] | None:
    """The structural report if it is computed, else None (job creation does not wait for it)."""
    return _stored_report(session, row.id) if row.report_status == READY else None


def _stored_report(session: Session, file_id: str) -> dict[str, Any] | None:
    # Selected by itself: `files.report` is deferred, and a row loaded for its other columns does not carry it.
    return session.scalar(select(StoredFile.report).where(StoredFile.id == file_id))


def _stale(table: type[StoredFile] | type[FileTokenStats], settings: Settings, now: datetime) -> Any:
    """A pending claim old enough that its process probably died, or a failure as old: whoever asks next takes it
    over and computes it again."""
    cutoff = now - timedelta(seconds=settings.report_stale_after_seconds)
    if table is StoredFile:
        return StoredFile.report_status.in_((PENDING, FAILED)) & (StoredFile.report_claimed_at < cutoff)
    return FileTokenStats.status.in_((PENDING, FAILED)) & (FileTokenStats.claimed_at < cutoff)


def status_details(example_count: int, report: dict[str, Any]) -> str:
    """One line for the file object: how many examples, and the report's warnings."""
    warnings = report.get("warnings", [])
    text = f"{example_count} {report.get('format') or ''} examples".replace("  ", " ")
    if not warnings:
        return f"{text}; no problems found"
    return f"{text}; {len(warnings)} warning(s): " + " ".join(warning["message"] for warning in warnings[:3])
