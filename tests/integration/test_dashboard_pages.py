"""The dashboard's pages over plain HTTP: the login, what each page shows, and that one organisation's pages are
not another's. The browser test (test_dashboard_browser.py) covers what scripts draw and stream."""

import re
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest
from sqlalchemy import select

from app.api.dashboard import pages
from app.api.deps import SESSION_COOKIE
from app.core import job_state
from app.core.db import transaction
from app.core.errors import NotFound
from app.core.keys import find_key, revoke_key
from app.core.settings import Settings
from app.core.tables import FileTokenStats
from tests.helpers.datasets import chat_jsonl
from tests.helpers.waiting import eventually


@pytest.fixture
def browser(api_base_url: str, org_key: str) -> Iterator[httpx.Client]:
    """A client that logged in through the form, as a browser would; it keeps the cookie and does not follow
    redirects, so tests see where each page sends it."""
    with httpx.Client(base_url=api_base_url, timeout=120) as client:
        answer = client.post("/login", data={"api_key": org_key, "next": "/jobs"})
        assert answer.status_code == 303 and answer.headers["location"] == "/jobs"
        yield client


def _queued_job(client: openai.OpenAI, training: bytes | None = None) -> str:
    uploaded = client.files.create(file=("tickets.jsonl", training or chat_jsonl()), purpose="fine-tune")
    return client.fine_tuning.jobs.create(training_file=uploaded.id, model="smollm2-135m-instruct").id


def test_pages_send_a_visitor_without_a_key_to_the_login(api_base_url: str) -> None:
    for path in ("/", "/jobs", "/files", "/models", "/playground?a=x"):
        answer = httpx.get(f"{api_base_url}{path}", cookies={SESSION_COOKIE: "lp_not-a-key"})
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login")
    assert httpx.get(f"{api_base_url}/jobs").headers["location"] == "/login?next=/jobs"


def test_login_with_a_wrong_key_says_so(api_base_url: str) -> None:
    answer = httpx.post(f"{api_base_url}/login", data={"api_key": "lp_wrong", "next": "/"})

    assert answer.status_code == 401
    assert "Incorrect API key provided" in answer.text and SESSION_COOKIE not in answer.cookies


def test_a_login_or_logout_form_sent_from_another_site_is_refused(
    browser: httpx.Client, api_base_url: str, org_key: str
) -> None:
    """Another site's page could otherwise log its visitor into the attacker's organisation."""
    form = {"api_key": org_key, "next": "/"}
    host = api_base_url.removeprefix("http://")
    refused = [
        httpx.post(f"{api_base_url}/login", data=form, headers={"Origin": "https://evil.example"}),
        httpx.post(f"{api_base_url}/login", data=form, headers={"Sec-Fetch-Site": "cross-site"}),
        browser.post("/logout", headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}),
    ]
    same_site = httpx.post(
        f"{api_base_url}/login", data=form, headers={"Origin": api_base_url, "Sec-Fetch-Site": "same-origin"}
    )

    for answer in refused:
        assert answer.status_code == 403 and "another site" in answer.text
        assert "set-cookie" not in answer.headers
    assert browser.get("/v1/models").status_code == 200  # the refused logout left the session alone
    assert same_site.status_code == 303 and SESSION_COOKIE in same_site.cookies
    assert httpx.post(f"{api_base_url}/login", data=form, headers={"Origin": f"http://{host}"}).status_code == 303


def test_the_login_cookie_is_http_only_and_works_for_the_api(
    browser: httpx.Client, api_base_url: str, org_key: str
) -> None:
    set_cookie = httpx.post(f"{api_base_url}/login", data={"api_key": org_key}).headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie

    assert browser.get("/v1/models").status_code == 200
    assert browser.post("/logout").headers["location"] == "/login"
    assert browser.get("/v1/models").status_code == 401  # the cookie is gone


def test_a_revoked_key_is_logged_out_at_once(browser: httpx.Client, org_key: str, settings: Settings) -> None:
    assert browser.get("/jobs").status_code == 200
    with transaction(settings.require("database_url")) as session:
        key = find_key(session, org_key)
        assert key is not None
        revoke_key(session, key.id)

    assert browser.get("/jobs").status_code == 303


def test_job_page_draws_the_curves_of_the_metrics_recorded(
    browser: httpx.Client, client: openai.OpenAI, settings: Settings
) -> None:
    job_id = _queued_job(client)
    losses = [2.5, 1.9, 1.2, 0.8]
    with transaction(settings.require("database_url")) as session:  # what the worker records at each step
        for step, loss in enumerate(losses, start=1):
            data = {"step": step, "total_steps": 10, "epoch": 1, "train_loss": loss, "train_mean_token_accuracy": 0.5}
            if step % 2 == 0:
                data |= {"valid_loss": loss + 0.1, "valid_mean_token_accuracy": 0.4}
            job_state.add_event(session, job_id, f"Step {step}/10", type_="metrics", data=data)

    page = browser.get(f"/jobs/{job_id}").text

    loss_chart = re.search(r'<svg id="chart-loss".*?</svg>', page, re.S)
    assert loss_chart is not None
    train, valid = re.findall(r'<polyline class="line (train|valid)" points="([^"]+)"', loss_chart.group())
    assert train[0] == "train" and len(train[1].split()) == len(losses)
    assert valid[0] == "valid" and len(valid[1].split()) == 2
    assert "train loss from 2.5 at step 1 to 0.8 at step 4" in loss_chart.group()  # the chart's description
    assert 'id="chart-mean-token-accuracy"' in page
    assert "step 4 of 10" in page and 'data-live="true"' in page and "Cancel job" in page
    listing = browser.get("/jobs").text
    assert job_id in listing and "4/10" in listing


def test_file_page_shows_the_conflicting_lines_themselves(browser: httpx.Client, client: openai.OpenAI) -> None:
    marker = uuid.uuid4().hex[:8]
    conflicting = (
        f'{{"messages": [{{"role": "user", "content": "Ticket: refund {marker}"}}, '
        f'{{"role": "assistant", "content": "ANSWER {{}}"}}]}}\n'
    )
    training = chat_jsonl() + conflicting.replace("{}", "one").encode() + conflicting.replace("{}", "two").encode()
    uploaded = client.files.create(file=("conflicts.jsonl", training), purpose="fine-tune")
    first = chat_jsonl().count(b"\n") + 1

    page = eventually(  # the report is computed in the background; until then the page says so
        lambda: "Computing the data report" not in (text := browser.get(f"/files/{uploaded.id}").text) and text,
        what="the file page with its report",
    )

    assert f"lines {first}, {first + 1}" in page
    assert f"<td>{first}</td>" in page and "ANSWER one" in page and "ANSWER two" in page
    assert "conflicts.jsonl" in browser.get("/files").text


def _token_stats_kept(settings: Settings, file_id: str) -> bool:
    with transaction(settings.require("database_url")) as session:
        return session.scalars(select(FileTokenStats).where(FileTokenStats.file_id == file_id)).first() is not None


def test_a_page_that_fails_keeps_nothing_it_computed(
    browser: httpx.Client, client: openai.OpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file page computes and keeps the file's token counts; when the page fails after that, its request's
    transaction is rolled back like an API request's, though the answer is an HTML page."""
    uploaded = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune")

    def gone(*_: object) -> list:
        raise NotFound("The file's object is gone")

    monkeypatch.setattr(pages, "lines_of", gone)
    failed = browser.get(f"/files/{uploaded.id}")
    assert failed.status_code == 404 and "The file&#39;s object is gone" in failed.text
    assert not _token_stats_kept(settings, uploaded.id)

    monkeypatch.undo()
    assert browser.get(f"/files/{uploaded.id}").status_code == 200
    assert _token_stats_kept(settings, uploaded.id)


def test_another_organisations_pages_are_not_found(browser: httpx.Client, other_client: openai.OpenAI) -> None:
    job_id = _queued_job(other_client)
    file_id = other_client.fine_tuning.jobs.retrieve(job_id).training_file

    for path in (f"/jobs/{job_id}", f"/files/{file_id}"):
        answer = browser.get(path)
        assert answer.status_code == 404 and "Not found" in answer.text, path
    assert job_id not in browser.get("/jobs").text


def test_models_page_lists_the_base_models_with_a_playground_link(browser: httpx.Client, settings: Settings) -> None:
    page = browser.get("/models").text

    assert settings.default_base_model in page and "/playground?a=" in page
    playground = browser.get(f"/playground?a={settings.default_base_model}").text
    assert f'<option value="{settings.default_base_model}" selected>' in playground
