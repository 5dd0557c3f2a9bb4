"""Who is looking at the dashboard: a login, kept as an opaque session token in an HttpOnly cookie.

The token is not the API key (app/core/dashboard_sessions.py); logging out ends it, and revoking the key it was
opened with ends it at once. `SameSite=Lax` keeps other sites' forms and scripts from sending it and `HttpOnly`
keeps it from the page's own scripts; the API refuses cookie-authenticated changes from other origins (same-site
ones included, `app.api.deps.refuse_other_origins`). The login and logout forms, which need no cookie, refuse posts
from other sites too: one could otherwise log a visitor into the attacker's organisation, where the visitor's next
upload would land.
"""

from datetime import timedelta
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse

from app.api.deps import SESSION_COOKIE, SettingsDep, authenticated
from app.core.dashboard_sessions import close_session, open_session
from app.core.db import transaction
from app.core.errors import AuthenticationFailed, PermissionDenied
from app.core.keys import Caller
from app.core.settings import Settings
from app.core.tables import Organization


class LoginRequired(Exception):
    """No live login in the cookie: the page sends the browser to the login form."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def _logged_in_caller(request: Request) -> Caller:
    """The caller of the browser's login; pages are throttled and rate-limited as the API is."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        try:
            return authenticated(request, None, token)
        except AuthenticationFailed:
            pass
    raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))


def dashboard_org(request: Request) -> Organization:
    return _logged_in_caller(request).org


DashboardOrgDep = Annotated[Organization, Depends(dashboard_org)]


def dashboard_admin_org(request: Request) -> Organization:
    """The organisation of the browser's login, if it logged in with an admin key (as the API's admin routes)."""
    caller = _logged_in_caller(request)
    if not caller.key.is_admin:
        raise PermissionDenied("This page is shown to admin keys only: log in with one of your admin keys.")
    return caller.org


DashboardAdminOrgDep = Annotated[Organization, Depends(dashboard_admin_org)]


def from_this_site(request: Request) -> None:
    """Refuses a form the browser says another site sent (Fetch Metadata, else `Origin`). Clients that send
    neither header (curl, scripts) are not browsers, so no other site can make them post."""
    fetch_site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    if fetch_site is not None:
        cross = fetch_site not in ("same-origin", "none")
    else:
        cross = origin is not None and urlsplit(origin).netloc != request.headers.get("host")
    if cross:
        raise PermissionDenied("This form was sent from another site; open the dashboard and send it from there.")


SameSiteFormDep = Depends(from_this_site)


def to_login(next_path: str) -> RedirectResponse:
    """To the login form, forgetting the cookie (logging out is going there from `/`)."""
    # Quoted, so the page's own query (`?a=x&b=y`) stays inside `next` (found by tests/test_dashboard_fuzzing.py).
    target = f"/login?next={quote(next_path, safe='/')}" if next_path != "/" else "/login"
    response = RedirectResponse(target, status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


def log_out(request: Request, settings: SettingsDep) -> RedirectResponse:
    """Ends the browser's login on the server too, so a copy of the cookie stops working."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        with transaction(settings.require("database_url")) as session:
            close_session(session, token)
    return to_login("/")


def served_over_https(request: Request, settings: Settings) -> bool:
    """Whether the browser reached us over TLS: our own, or a proxy's that says so and is trusted to
    (`LORAPORT_TRUST_FORWARDED_PROTO`; anyone can send the header to a server reached directly)."""
    if request.url.scheme == "https":
        return True
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return settings.trust_forwarded_proto and forwarded == "https"


def logged_in(request: Request, settings: Settings, caller: Caller, next_path: str) -> RedirectResponse:
    """Where the login form sends the browser once the key is known good: back where it was going, with a new
    session in the cookie."""
    hours = settings.dashboard_session_hours
    with transaction(settings.require("database_url")) as session:
        token = open_session(session, caller, timedelta(hours=hours))
    safe = next_path if next_path.startswith("/") and not next_path.startswith("//") else "/"
    response = RedirectResponse(safe, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=hours * 3600,
        httponly=True,
        samesite="lax",
        secure=served_over_https(request, settings),
    )
    return response
