"""Typed FastAPI dependencies: settings, the request's transaction, the caller's key and organisation, and what
`app.api.main` keeps in the app's state (base models, the inference backend, admission, the rate limiter)."""

from collections.abc import Iterator
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.api.generation.admission import Admission
from app.api.orgs.rate_limit import FailedAuthentications, RateLimiter, charge_organization
from app.core import webhook_outbox
from app.core.dashboard_sessions import session_caller
from app.core.db import run_after_commit, run_after_rollback, session_factory, transaction
from app.core.errors import AuthenticationFailed, PermissionDenied
from app.core.keys import Caller, authenticate
from app.core.settings import Settings
from app.core.storage import ObjectStore, store_for
from app.core.tables import Organization
from app.ml.base_models.registry import BaseModelRegistry
from app.serving.backend import InferenceBackend

_bearer = HTTPBearer(auto_error=False)
# The dashboard's login (app/api/dashboard/session.py) keeps a session token in this cookie, so the pages' scripts call
# the same API the SDK does; a request with a bearer key uses that key.
SESSION_COOKIE = "loraport_session"
_cookie = APIKeyCookie(name=SESSION_COOKIE, auto_error=False)
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


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


def get_failed_authentications(request: Request) -> FailedAuthentications:
    """Made on first use and kept in the app's state, beside the rate limiter."""
    state = request.app.state
    if getattr(state, "failed_authentications", None) is None:
        settings: Settings = state.settings
        state.failed_authentications = FailedAuthentications(
            settings.require("redis_url"), settings.failed_auth_per_minute
        )
    return state.failed_authentications


def get_session(settings: SettingsDep) -> Iterator[Session]:
    """One transaction per request: committed when the route returns without error, rolled back when it raises.

    The commit comes before the response is sent, so a client never sees an answer for a change that was not
    stored. What must follow the commit (broker messages, deleting objects), or undo work when there is none (an
    object stored for a row that was not), the route registers with `after_commit` and `after_rollback`.
    """
    with session_factory(settings.require("database_url"))() as session:
        webhook_outbox.use_settings(session, settings)
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
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    session_token: Annotated[str | None, Depends(_cookie)],
) -> Caller:
    """The bearer key's caller, else the dashboard login's: a cookie-authenticated change must come from the
    dashboard's own origin (another port or subdomain is same-site, so SameSite=Lax alone lets its forms through)."""
    if credentials is None and session_token and request.method not in _SAFE_METHODS:
        refuse_other_origins(request)
    return authenticated(request, credentials.credentials if credentials else None, session_token)


def refuse_other_origins(request: Request) -> None:
    """403 unless the browser says the request comes from this origin: `Sec-Fetch-Site: same-origin`, or, from a
    browser that sends no Fetch Metadata, an `Origin` naming this host."""
    fetch_site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    if fetch_site is not None:
        same = fetch_site == "same-origin"
    else:
        same = origin is not None and urlsplit(origin).netloc == request.headers.get("host")
    if not same:
        raise PermissionDenied(
            "This request carries the dashboard's login cookie but was not sent from the dashboard's own origin; "
            "open the dashboard and act from there, or send an API key as 'Authorization: Bearer YOUR_KEY'.",
            code="cross_origin_request",
        )


def authenticated(request: Request, key: str | None, session_token: str | None = None) -> Caller:
    """The caller of an API key or, without one, of a dashboard login; throttled per client address when it fails
    (429 before any lookup once over the limit) and charged to the key's rate limit when it succeeds."""
    settings: Settings = request.app.state.settings
    failures = get_failed_authentications(request)
    address = request.client.host if request.client else "unknown"
    failures.check(address)
    try:
        with transaction(settings.require("database_url")) as session:
            caller = authenticate(session, key) if key or not session_token else session_caller(session, session_token)
    except AuthenticationFailed as error:
        if error.code != "missing_api_key":
            failures.count(address)
        raise
    rate_limiter = get_rate_limiter(request)
    rate_limiter.charge(caller.key.key_hash)
    charge_organization(rate_limiter, caller.org.id, settings.rate_limit_per_minute_per_organization)
    return caller


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
