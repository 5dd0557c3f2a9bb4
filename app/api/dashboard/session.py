"""Who is looking at the dashboard: the API key they logged in with, kept in an HttpOnly cookie.

The cookie holds the key itself, so revoking the key logs the browser out at once; `SameSite=Lax` keeps other
sites' forms and scripts from sending it, and `HttpOnly` keeps it from the page's own scripts. The login and logout
forms, which need no cookie, refuse posts from other sites: one could otherwise log a visitor into the attacker's
organisation, where the visitor's next upload would land.
"""

from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse

from app.api.deps import SESSION_COOKIE, SettingsDep, organization_of
from app.core.errors import AuthenticationFailed, PermissionDenied
from app.core.tables import Organization

SESSION_DAYS = 7


class LoginRequired(Exception):
    """No live key in the cookie: the page sends the browser to the login form."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def dashboard_org(request: Request, settings: SettingsDep) -> Organization:
    key = request.cookies.get(SESSION_COOKIE)
    if key:
        try:
            return organization_of(settings, key)
        except AuthenticationFailed:
            pass
    raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))


DashboardOrgDep = Annotated[Organization, Depends(dashboard_org)]


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
    """To the login form, forgetting the key (logging out is going there from `/`)."""
    # Quoted, so the page's own query (`?a=x&b=y`) stays inside `next` (found by tests/test_dashboard_fuzzing.py).
    target = f"/login?next={quote(next_path, safe='/')}" if next_path != "/" else "/login"
    response = RedirectResponse(target, status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


def logged_in(request: Request, key: str, next_path: str) -> RedirectResponse:
    """Where the login form sends the browser once the key is known good: back where it was going."""
    safe = next_path if next_path.startswith("/") and not next_path.startswith("//") else "/"
    response = RedirectResponse(safe, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        key,
        max_age=SESSION_DAYS * 86_400,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response
