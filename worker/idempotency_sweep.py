"""Forgets `Idempotency-Key` answers once they are older than `idempotency_ttl_hours` (24 h, as OpenAI keeps
them): a retry comes within minutes, and without this the table grows with every create sent with a key."""

from datetime import timedelta

import structlog
from sqlalchemy import delete, func
from sqlalchemy.orm import Session

from app.core.tables import IdempotencyRecord

log = structlog.get_logger()


def expire_idempotency_keys(session: Session, ttl_hours: float) -> int:
    """Deletes the answers stored more than `ttl_hours` ago; how many."""
    cutoff = func.now() - timedelta(hours=ttl_hours)
    result = session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff))
    expired = int(getattr(result, "rowcount", 0) or 0)
    if expired:
        log.info("idempotency.expired", count=expired)
    return expired
