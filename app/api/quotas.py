"""What one organisation may hold at once: active jobs, active evaluations, stored bytes, open uploads and webhook
endpoints (the `max_*_per_organization` settings; 0 turns a limit off). Past a limit a create is a 429
`quota_exceeded` that names the limit, its setting, and what frees room.

Each check takes a per-organisation advisory lock held until the request's transaction ends, then counts: two
concurrent creates of one organisation are serialised, so the second counts the first one's row and both cannot
take the last slot. Only creates of one organisation wait for each other, and only while one is being stored.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from app.core.db import transaction
from app.core.errors import QuotaExceeded
from app.core.lifecycle import ACTIVE
from app.core.settings import Settings
from app.core.tables import Evaluation, FineTuningJob, StoredFile, Upload, WebhookEndpoint

_LOCK_SPACE = 0x10_5A  # the first key of our advisory locks: these are the quotas' (the second is the org's hash)
_GIB = 1024**3
_Owned = type[FineTuningJob] | type[Evaluation] | type[Upload] | type[WebhookEndpoint]


def check_active_jobs(session: Session, org_id: str, settings: Settings) -> None:
    """Room for one more fine-tuning job (queued or running)."""
    limit = settings.max_active_jobs_per_organization
    if not limit:
        return
    _lock(session, org_id)
    held = _count(session, FineTuningJob, org_id, FineTuningJob.status.in_(ACTIVE))
    if held >= limit:
        raise QuotaExceeded(
            f"Your organization has {held} active fine-tuning jobs (queued or running), the most this deployment "
            f"allows (LORAPORT_MAX_ACTIVE_JOBS_PER_ORGANIZATION={limit}); wait for one to finish or cancel one",
            details={"limit": limit, "current": held},
        )


def check_active_evaluations(session: Session, org_id: str, settings: Settings) -> None:
    """Room for one more evaluation (queued or running)."""
    limit = settings.max_active_evaluations_per_organization
    if not limit:
        return
    _lock(session, org_id)
    held = _count(session, Evaluation, org_id, Evaluation.status.in_(ACTIVE))
    if held >= limit:
        raise QuotaExceeded(
            f"Your organization has {held} evaluations queued or running, the most this deployment allows "
            f"(LORAPORT_MAX_ACTIVE_EVALUATIONS_PER_ORGANIZATION={limit}); wait for one to finish or cancel one",
            details={"limit": limit, "current": held},
        )


def check_webhook_endpoints(session: Session, org_id: str, settings: Settings) -> None:
    """Room for one more webhook endpoint: every finish of the organisation is sent to each of them."""
    limit = settings.max_webhook_endpoints_per_organization
    if not limit:
        return
    _lock(session, org_id)
    held = _count(session, WebhookEndpoint, org_id)
    if held >= limit:
        raise QuotaExceeded(
            f"Your organization has {held} webhook endpoints, the most this deployment allows "
            f"(LORAPORT_MAX_WEBHOOK_ENDPOINTS_PER_ORGANIZATION={limit}); delete one, or add event types to one",
            details={"limit": limit, "current": held},
        )


def check_new_upload(session: Session, org_id: str, settings: Settings, declared_bytes: int) -> None:
    """Room for one more open upload, and for the bytes it declares (reserved until it completes or ends)."""
    limit = settings.max_open_uploads_per_organization
    _lock(session, org_id)
    if limit:
        held = _count(session, Upload, org_id, *_open_upload())
        if held >= limit:
            raise QuotaExceeded(
                f"Your organization has {held} open uploads, the most this deployment allows "
                f"(LORAPORT_MAX_OPEN_UPLOADS_PER_ORGANIZATION={limit}); complete or cancel one, or wait for one to "
                "expire",
                details={"limit": limit, "current": held},
            )
    check_stored_bytes(session, org_id, settings, declared_bytes)


def check_stored_bytes(session: Session, org_id: str, settings: Settings, adding: int) -> None:
    """Room for `adding` more bytes beside the organisation's files and its open uploads' declared bytes."""
    limit = settings.max_stored_bytes_per_organization
    if not limit:
        return
    _lock(session, org_id)
    used = stored_bytes(session, org_id)
    if used + adding > limit:
        raise _storage_full(used, adding, limit)


def stored_bytes(session: Session, org_id: str) -> int:
    """The organisation's files, plus the bytes its open uploads declared (their parts stay within those)."""
    files = select(func.coalesce(func.sum(StoredFile.bytes), 0)).where(StoredFile.organization_id == org_id)
    uploads = select(func.coalesce(func.sum(Upload.bytes), 0)).where(Upload.organization_id == org_id, *_open_upload())
    return int(session.execute(files).scalar_one()) + int(session.execute(uploads).scalar_one())


class StorageRoom:
    """The bytes a streamed upload may still add, read when it starts: `take` refuses the chunk that would pass
    them, so an upload past the quota stops as it streams rather than after it is stored. The check at recording
    time (`check_stored_bytes`, under the lock) is the one that holds against concurrent uploads."""

    def __init__(self, settings: Settings, org_id: str) -> None:
        self.limit = settings.max_stored_bytes_per_organization
        self.used = 0
        if self.limit:
            with transaction(settings.require("database_url")) as session:
                self.used = stored_bytes(session, org_id)
        self.received = 0

    def take(self, chunk: bytes) -> bytes:
        self.received += len(chunk)
        if self.limit and self.used + self.received > self.limit:
            raise _storage_full(self.used, self.received, self.limit)
        return chunk


def _storage_full(used: int, adding: int, limit: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"Your organization stores {used / _GIB:.2f} GiB in files and open uploads; {adding} more bytes would pass "
        f"the {limit / _GIB:.2f} GiB this deployment allows (LORAPORT_MAX_STORED_BYTES_PER_ORGANIZATION={limit}); "
        "delete files you no longer need, or cancel open uploads",
        details={"limit": limit, "current": used},
    )


def _open_upload() -> Sequence[ColumnElement[bool]]:
    return (Upload.status == "pending", Upload.expires_at > datetime.now(UTC))


def _count(session: Session, table: _Owned, org_id: str, *where: ColumnElement[bool]) -> int:
    query = select(func.count()).select_from(table).where(table.organization_id == org_id, *where)
    return int(session.execute(query).scalar_one())


def _lock(session: Session, org_id: str) -> None:
    """Waits for, then holds until the transaction ends, the organisation's quota lock."""
    session.execute(select(func.pg_advisory_xact_lock(_LOCK_SPACE, func.hashtext(org_id))))
