"""`Idempotency-Key` on creates: a retried request gets the first answer instead of a second object.

The openai SDK retries 408/409/429/5xx on its own, so a create that committed but whose answer was
lost would otherwise run twice. Keys are per organisation; the same key with another request is a 422.
A replayed file is the stored answer; a replayed job is that job as it is now (its status moves on). Answers are
kept `idempotency_ttl_hours` (24 h, as OpenAI), then the maintenance worker deletes them (worker.idempotency_sweep).
"""

import hashlib
import json
from typing import Annotated, Any

from fastapi import Header
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.errors import Conflict, UnprocessableEntity
from app.core.tables import IdempotencyRecord, Organization

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]


def request_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def replay(session: Session, org: Organization, key: str, endpoint: str, digest: str) -> dict[str, Any] | None:
    """The stored answer for this key, None when the key is new; 422 when it was used for another request."""
    record = session.scalar(
        select(IdempotencyRecord).where(IdempotencyRecord.organization_id == org.id, IdempotencyRecord.key == key)
    )
    if record is None:
        return None
    if record.endpoint != endpoint or record.request_hash != digest:
        raise UnprocessableEntity(
            f"Idempotency-Key '{key}' was already used with a different request; use a new key for a new request",
            code="idempotency_key_reused",
        )
    return record.response


def remember(session: Session, org: Organization, key: str, endpoint: str, digest: str, response: dict) -> None:
    """Stores the answer in the request's transaction, so it commits with the object it describes; a concurrent
    request with the same key that stored its answer first makes this one a 409 (`in_flight`)."""
    session.add(
        IdempotencyRecord(organization_id=org.id, key=key, endpoint=endpoint, request_hash=digest, response=response)
    )
    try:
        session.flush()
    except IntegrityError:
        raise in_flight(key) from None


def in_flight(key: str) -> Conflict:
    """A concurrent request with the same key won the race; the SDK retries a 409 and then gets the replay."""
    return Conflict(
        f"A request with Idempotency-Key '{key}' is being processed; retry shortly", code="idempotency_key_in_use"
    )
