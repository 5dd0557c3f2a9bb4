"""API keys: `lp_` + random secret, stored only as a SHA-256 digest and shown once."""

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app import ids
from app.errors import AuthenticationFailed, InvalidRequest, NotFound
from app.tables import ApiKey, Organization

KEY_PREFIX = "lp_"
_SHOWN_PREFIX_LENGTH = 12
_ORG_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    plaintext: str


def digest(plaintext: str) -> str:
    # Keys carry 140+ bits of randomness, so a fast unsalted digest allows an indexed lookup safely.
    return hashlib.sha256(plaintext.encode()).hexdigest()


def get_or_create_org(session: Session, name: str) -> Organization:
    if not _ORG_NAME.match(name):
        raise InvalidRequest(f"organisation name {name!r} must be lowercase letters, digits and dashes")
    org = session.scalar(select(Organization).where(Organization.name == name))
    if org is None:
        org = Organization(id=ids.org_id(), name=name)
        session.add(org)
        session.flush()
    return org


def issue_key(session: Session, org: Organization, name: str = "", plaintext: str | None = None) -> IssuedKey:
    """Create a key; `plaintext` lets operators choose it (bootstrap for scripts and CI)."""
    plaintext = plaintext or KEY_PREFIX + ids.random_token(40)
    key = ApiKey(
        id=ids.key_id(),
        organization_id=org.id,
        name=name,
        prefix=plaintext[:_SHOWN_PREFIX_LENGTH],
        key_hash=digest(plaintext),
    )
    session.add(key)
    session.flush()
    return IssuedKey(key, plaintext)


def find_key(session: Session, plaintext: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == digest(plaintext)))


def authenticate(session: Session, plaintext: str | None) -> Organization:
    """The organisation a live key belongs to, or 401."""
    if not plaintext:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    key = find_key(session, plaintext)
    if key is None or key.revoked_at is not None:
        raise AuthenticationFailed(f"Incorrect API key provided: {plaintext[:_SHOWN_PREFIX_LENGTH]}…")
    session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=datetime.now(UTC)))
    return session.get_one(Organization, key.organization_id)


def list_keys(session: Session, org_name: str | None = None) -> list[tuple[ApiKey, Organization]]:
    query = select(ApiKey, Organization).join(Organization).order_by(ApiKey.created_at)
    if org_name:
        query = query.where(Organization.name == org_name)
    return [(key, org) for key, org in session.execute(query)]


def revoke_key(session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"No API key with id {key_id!r}")
    key.revoked_at = key.revoked_at or datetime.now(UTC)
    return key
