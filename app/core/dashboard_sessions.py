"""Dashboard logins: the browser's cookie holds a random token, the database only its digest.

The cookie is not the API key, so a stolen cookie is worth one login (until logout, expiry or the key's revocation),
not the key itself; a session answers as its key does, so revoking the key logs the browser out at once.
"""

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.core import ids
from app.core.errors import AuthenticationFailed
from app.core.keys import Caller, digest
from app.core.tables import ApiKey, DashboardSession, Organization

TOKEN_LENGTH = 43  # like a key: about 250 bits, so the unsalted digest allows an indexed lookup


def open_session(session: Session, caller: Caller, lifetime: timedelta) -> str:
    """A new login for the caller's key; returns the token for the cookie (shown once, stored as a digest)."""
    token = ids.random_token(TOKEN_LENGTH)
    now = datetime.now(UTC)
    # The key's ended logins go as it logs in again, so rows do not pile up.
    session.execute(
        delete(DashboardSession).where(DashboardSession.api_key_id == caller.key.id, DashboardSession.expires_at <= now)
    )
    session.add(
        DashboardSession(
            token_hash=digest(token),
            organization_id=caller.org.id,
            api_key_id=caller.key.id,
            expires_at=now + lifetime,
        )
    )
    session.flush()
    return token


def session_caller(session: Session, token: str) -> Caller:
    """The key and organisation of a live login, or 401: unknown, expired, or its key revoked."""
    row = session.execute(
        select(ApiKey, Organization)
        .join(DashboardSession, DashboardSession.api_key_id == ApiKey.id)
        .join(Organization, Organization.id == ApiKey.organization_id)
        .where(
            DashboardSession.token_hash == digest(token),
            DashboardSession.expires_at > datetime.now(UTC),
            ApiKey.revoked_at.is_(None),
        )
    ).first()
    if row is None:
        raise AuthenticationFailed(
            "Your dashboard login has ended (logged out, expired, or its API key was revoked); log in again."
        )
    return Caller(row[0], row[1])


def close_session(session: Session, token: str) -> None:
    session.execute(delete(DashboardSession).where(DashboardSession.token_hash == digest(token)))
