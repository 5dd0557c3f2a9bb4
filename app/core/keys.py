"""API keys: `lp_` + random secret, stored only as a SHA-256 digest and shown once."""

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.orm import Session

from app.core import ids
from app.core.errors import AuthenticationFailed, Conflict, InvalidRequest, NotFound
from app.core.scoped import get_owned
from app.core.tables import ApiKey, DashboardSession, Organization

KEY_PREFIX = "lp_"
# Shown to tell keys apart (`redacted_value`, `loraport keys list`): 8 characters, and never more than a quarter of
# a key, so a short key is not stored in clear (bootstrap keys are 32 characters or more, generated ones 43).
_SHOWN_PREFIX_LENGTH = 8
_ORG_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    plaintext: str


@dataclass(frozen=True)
class Caller:
    """Who made a request: the live key and its organisation."""

    key: ApiKey
    org: Organization


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


def issue_key(
    session: Session, org: Organization, name: str = "", plaintext: str | None = None, admin: bool = False
) -> IssuedKey:
    """Create a key; `plaintext` lets operators choose it (bootstrap for scripts and CI); an `admin` key may also
    manage the organisation's keys (`/v1/organization/api_keys`)."""
    plaintext = plaintext or KEY_PREFIX + ids.random_token(40)
    key = ApiKey(
        id=ids.key_id(),
        organization_id=org.id,
        name=name,
        prefix=shown_prefix(plaintext),
        key_hash=digest(plaintext),
        is_admin=admin,
    )
    session.add(key)
    session.flush()
    return IssuedKey(key, plaintext)


def shown_prefix(plaintext: str) -> str:
    return plaintext[: min(_SHOWN_PREFIX_LENGTH, len(plaintext) // 4)]


def find_key(session: Session, plaintext: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == digest(plaintext)))


def authenticate(session: Session, plaintext: str | None) -> Caller:
    """The live key and its organisation, or 401."""
    if not plaintext:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    key = find_key(session, plaintext)
    if key is None or key.revoked_at is not None:
        raise AuthenticationFailed(f"Incorrect API key provided: {shown_prefix(plaintext)}…")
    session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=datetime.now(UTC)))
    return Caller(key, session.get_one(Organization, key.organization_id))


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
    end_key_sessions(session, key)
    return key


def list_live_keys(session: Session, org: Organization, after: str | None, limit: int) -> tuple[list[ApiKey], bool]:
    """The organisation's live keys, newest first, after the key `after`, and whether more follow."""
    order = (ApiKey.created_at, ApiKey.id)  # no `seq` column: creation time, and the id where times tie
    query = select(ApiKey).where(ApiKey.organization_id == org.id, ApiKey.revoked_at.is_(None))
    if after:
        # any key of the organisation anchors a page, so revoking one between pages does not break the listing
        anchor = session.execute(select(*order).where(ApiKey.id == after, ApiKey.organization_id == org.id)).first()
        if anchor is None:
            raise InvalidRequest(f"No object with id '{after}' to page after", param="after")
        query = query.where(tuple_(*order) < tuple_(*anchor))
    rows = list(session.scalars(query.order_by(*(column.desc() for column in order)).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def get_live_key(session: Session, org: Organization, key_id: str) -> ApiKey:
    """A live key of the organisation; another organisation's key, or a revoked one, is 'not found'."""
    key = get_owned(session, ApiKey, org.id, key_id, "API key")
    if key.revoked_at is not None:
        raise NotFound(f"No such API key: '{key_id}'", param="id")
    return key


def revoke_org_key(session: Session, caller: Caller, key_id: str) -> ApiKey:
    """Revokes a live key of the caller's organisation, but never the caller's own key: the caller is an admin key
    and stays live, so an organisation keeps an admin key (unless two revoke each other at the same instant; the
    CLI's `keys create --admin` is the way back)."""
    key = get_live_key(session, caller.org, key_id)
    if key.id == caller.key.id:
        raise Conflict(
            "This is the key making the request; revoke it with another admin key (or `loraport keys revoke`).",
            param="key_id",
            code="cannot_revoke_own_key",
        )
    key.revoked_at = datetime.now(UTC)
    end_key_sessions(session, key)
    session.flush()
    return key


def end_key_sessions(session: Session, key: ApiKey) -> None:
    """Logs out the dashboards opened with `key` (they would be refused anyway: a session lives with its key)."""
    session.execute(delete(DashboardSession).where(DashboardSession.api_key_id == key.id))
