"""The dashboard's pages: server-rendered HTML over the same services the API uses. Actions (cancel, delete,
upload) and the playground are scripts calling the API itself with the login cookie, so no logic is repeated."""

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy.exc
from fastapi import APIRouter, FastAPI, Form, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from app.api.dashboard.curves import job_curves
from app.api.dashboard.file_lines import lines_of
from app.api.dashboard.formats import age, measure, prompt_text, size, utc_day
from app.api.dashboard.session import (
    DashboardAdminOrgDep,
    DashboardOrgDep,
    LoginRequired,
    SameSiteFormDep,
    log_out,
    logged_in,
    to_login,
)
from app.api.dashboard.usage_table import recent_usage
from app.api.deps import RegistryDep, SessionDep, SettingsDep, StoreDep, authenticated
from app.api.files import report_runs
from app.api.files import service as files
from app.api.jobs import service as jobs
from app.api.models import service as catalog
from app.core import job_state
from app.core.errors import AuthenticationFailed, LoraportError
from app.core.lifecycle import ACTIVE

LISTED_LINES = 200  # lines of a file shown beside its report
# No page may be framed by another site (clickjacking a cancel or delete button): CSP for today's browsers,
# X-Frame-Options for older ones.
FRAMING_HEADERS = {"Content-Security-Policy": "frame-ancestors 'none'", "X-Frame-Options": "DENY"}


templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters |= {"age": age, "measure": measure, "prompt_text": prompt_text, "size": size, "utc_day": utc_day}


class PageAnswer(Exception):
    """A page's refusal, already rendered: raised through the request's transaction, which it rolls back, and
    answered by the handler `install_page_answers` adds."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class _PageRoute(APIRoute):
    """A page whose caller is not logged in goes to the login form; a missing object is an HTML 404 page, and
    any other refusal an HTML page too."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired as login:
                raise PageAnswer(to_login(login.next_path)) from None
            except LoraportError as error:
                title = "Not found" if error.status_code == 404 else "Error"
                raise PageAnswer(_error_page(request, title, error.message, error.status_code)) from None
            except sqlalchemy.exc.DataError:
                # An id PostgreSQL cannot look up (a NUL character, found by tests/test_dashboard_fuzzing.py).
                message = "The address holds a value that cannot be looked up."
                raise PageAnswer(_error_page(request, "Error", message, 400)) from None
            response.headers.update(FRAMING_HEADERS)
            return response

        return page


def install_page_answers(app: FastAPI) -> None:
    async def answer(_: Request, refusal: Exception) -> Response:
        assert isinstance(refusal, PageAnswer)
        refusal.response.headers.update(FRAMING_HEADERS)
        return refusal.response

    app.add_exception_handler(PageAnswer, answer)


def _error_page(request: Request, title: str, message: str, status_code: int) -> Response:
    context = {"title": title, "message": message}
    return templates.TemplateResponse(request, "error.html", context, status_code=status_code)


router = APIRouter(route_class=_PageRoute, include_in_schema=False)


@router.get("/")
def home(org: DashboardOrgDep) -> RedirectResponse:
    return RedirectResponse("/jobs", status_code=303)


@router.get("/login")
def login_form(request: Request, next: str = "/") -> Response:
    return templates.TemplateResponse(request, "login.html", {"next": next})


@router.post("/login", dependencies=[SameSiteFormDep])
def log_in(
    request: Request, settings: SettingsDep, api_key: Annotated[str, Form()], next: Annotated[str, Form()] = "/"
) -> Response:
    try:
        caller = authenticated(request, api_key.strip() or None)
    except AuthenticationFailed as error:
        context = {"next": next, "error": error.message}
        return templates.TemplateResponse(request, "login.html", context, status_code=401)
    return logged_in(request, settings, caller, next)


router.add_api_route("/logout", log_out, methods=["POST"], dependencies=[SameSiteFormDep])


@router.get("/jobs")
def job_list(request: Request, org: DashboardOrgDep, session: SessionDep, after: str | None = None) -> Response:
    rows, has_more = jobs.list_jobs(session, org, after, 50)
    progress = job_state.latest_metrics(session, [row.id for row in rows])
    context = {"org": org, "jobs": rows, "progress": progress, "has_more": has_more, "active": ACTIVE}
    return templates.TemplateResponse(request, "jobs.html", context)


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str, org: DashboardOrgDep, session: SessionDep) -> Response:
    job = jobs.get_job(session, org, job_id)
    metrics = job_state.metrics(session, job.id)
    events, _ = jobs.list_events(session, org, job.id, None, 100)
    checkpoints, _ = jobs.list_checkpoints(session, org, job.id, None, 50)
    context = {
        "org": org,
        "job": job,
        "live": job.status in ACTIVE,
        "latest": metrics[-1] if metrics else None,
        "curves": job_curves(metrics),
        "events": events,
        "checkpoints": checkpoints,
    }
    return templates.TemplateResponse(request, "job.html", context)


@router.get("/files")
def file_list(request: Request, org: DashboardOrgDep, session: SessionDep) -> Response:
    rows, has_more = files.list_files(session, org, None, 200, None, newest_first=True)
    return templates.TemplateResponse(request, "files.html", {"org": org, "files": rows, "has_more": has_more})


@router.get("/files/{file_id}")
def file_page(
    request: Request,
    file_id: str,
    org: DashboardOrgDep,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
) -> Response:
    row = files.get_file(session, org, file_id)
    # Computed once, in the background: until then the page says so and reloads itself.
    structure = report_runs.structure(session, settings, row)
    tokens = report_runs.tokens(session, settings, row, settings.default_base_model)
    report = (structure.body or {}) if structure.status == "ready" else {}
    named = sorted({n for warning in report.get("warnings", []) for n in warning.get("lines", [])})[:LISTED_LINES]
    context = {
        "org": org,
        "file": row,
        "report_status": structure.status,
        "report": report,
        "tokens_status": tokens.status,
        "tokens": (tokens.body or {}) if tokens.status == "ready" else {},
        "lines": lines_of(store, row.storage_key, named),
    }
    return templates.TemplateResponse(request, "file.html", context)


@router.get("/models")
def model_list(request: Request, org: DashboardOrgDep, session: SessionDep, registry: RegistryDep) -> Response:
    models = catalog.list_models(session, registry, org)
    return templates.TemplateResponse(request, "models.html", {"org": org, "models": models})


@router.get("/playground")
def playground(
    request: Request,
    org: DashboardOrgDep,
    session: SessionDep,
    registry: RegistryDep,
    a: str | None = None,
    b: str | None = None,
) -> Response:
    models = [model.id for model in catalog.list_models(session, registry, org)]
    context = {"org": org, "models": models, "a": a or models[0], "b": b or models[-1]}
    return templates.TemplateResponse(request, "playground.html", context)


@router.get("/usage")
def usage_page(request: Request, org: DashboardAdminOrgDep, session: SessionDep) -> Response:
    days = recent_usage(session, org.id)
    return templates.TemplateResponse(request, "usage.html", {"org": org, "days": days})
