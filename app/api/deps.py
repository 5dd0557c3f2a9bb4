"""Typed FastAPI dependencies: settings, the request's transaction, the caller's key and organisation, and what
`app.api.main` keeps in the app's state (base models, the inference backend, admission, the rate limiter)."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.api.generation.admission import Admission
from app.api.orgs.rate_limit import RateLimiter, charge_organization
from app.core.db import run_after_commit, run_after_rollback, session_factory, transaction
from app.core.errors import PermissionDenied
from app.core.keys import Caller, authenticate, digest
from app.core.settings import Settings
from app.core.storage import ObjectStore, store_for
from app.core.tables import Organization
from app.ml.base_models.registry import BaseModelRegistry
from app.serving.backend import InferenceBackend

_bearer = HTTPBearer(auto_error=False)
# The dashboard's login (app/api/dashboard/session.py) keeps the key in this cookie, so the pages' scripts call the same
# API the SDK does; a request with a bearer key uses that key.
SESSION_COOKIE = "loraport_key"
_cookie = APIKeyCookie(name=SESSION_COOKIE, auto_error=False)


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_registry(request: Request) -> BaseModelRegistry:
    return request.app.state.registry


RegistryDep = Annotated[BaseModelRegistry, Depends(get_registry)]


def get_backend(request: Request) -> InferenceBackend:
    """Where generation runs: the engine in this process, or the replicas."""
    return request.app.state.engine


BackendDep = Annotated[InferenceBackend, Depends(get_backend)]


def get_admission(request: Request) -> Admission:
    return request.app.state.admission


AdmissionDep = Annotated[Admission, Depends(get_admission)]


def get_rate_limiter(request: Request) -> RateLimiter:
    return request.app.state.rate_limiter


RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    """One transaction per request: committed when the route returns without error, rolled back when it raises.

    The commit comes before the response is sent, so a client never sees an answer for a change that was not
    stored. What must follow the commit (broker messages, deleting objects), or undo work when there is none (an
    object stored for a row that was not), the route registers with `after_commit` and `after_rollback`.
    """
    with session_factory(settings.require("database_url"))() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            run_after_rollback(session)
            raise
        run_after_commit(session)


# Closed when the route returns, before the response is sent: a streamed answer (a chat, a download) holds no
# pooled connection while it streams, and a database gone at that moment is a 503, not an error after the fact.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_store(settings: SettingsDep) -> ObjectStore:
    return store_for(settings)


StoreDep = Annotated[ObjectStore, Depends(get_store)]


def current_caller(
    settings: SettingsDep,
    rate_limiter: RateLimiterDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cookie_key: Annotated[str | None, Depends(_cookie)],
) -> Caller:
    key = credentials.credentials if credentials else cookie_key
    caller = caller_of(settings, key)
    rate_limiter.charge(digest(key or ""))
    charge_organization(rate_limiter, caller.org.id, settings.rate_limit_per_minute_per_organization)
    return caller


def caller_of(settings: Settings, key: str | None) -> Caller:
    """The live key and its organisation, or `AuthenticationFailed`; looked up on every request, so a revoked key
    gets 401 at once. Committed on its own, so `last_used_at` survives a request that later fails."""
    with transaction(settings.require("database_url")) as session:
        return authenticate(session, key)


def organization_of(settings: Settings, key: str | None) -> Organization:
    return caller_of(settings, key).org


CallerDep = Annotated[Caller, Depends(current_caller)]


def current_org(caller: CallerDep) -> Organization:
    return caller.org


OrgDep = Annotated[Organization, Depends(current_org)]


def current_admin(caller: CallerDep) -> Caller:
    """The caller, if its key is an admin key; any other live key gets 403."""
    if not caller.key.is_admin:
        raise PermissionDenied(
            "This API key may not manage API keys: use an admin key (`loraport keys create --admin`)."
        )
    return caller


AdminDep = Annotated[Caller, Depends(current_admin)]
