"""The dashboard in a real browser (Debian's Chromium driven by Playwright): log in, watch a job train with its page
updating by itself until the loss curve is drawn, then stream one prompt to the base and the fine-tuned model side by
side. Screenshots land in tests/artifacts/."""

import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app.core.settings import Settings
from app.ml.base_models.from_settings import registry_from_settings
from tests.helpers.datasets import chat_jsonl
from worker.job_runner import run_job

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TRAINING_TIMEOUT_MS = 600_000


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is not installed; `make test` installs it (scripts/ensure-chromium.sh)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    ARTIFACTS.mkdir(exist_ok=True)
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def _log_in(page: Page, api_base_url: str, path: str, key: str) -> None:
    """Open `path`, which sends the browser to the login form first, and log in there."""
    page.goto(f"{api_base_url}{path}")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{api_base_url}{path}")


def _count_updates(page: Page, selector: str) -> None:
    """Counts, in the page, the changes the script makes to `selector`'s text: one per streamed piece."""
    page.evaluate(
        """selector => {
            const node = document.querySelector(selector);
            node.dataset.updates = "0";
            new MutationObserver((changes) => {
                node.dataset.updates = String(Number(node.dataset.updates) + changes.length);
            })
                .observe(node, { childList: true, characterData: true, subtree: true });
        }""",
        selector,
    )


def test_a_job_page_follows_training_then_the_playground_streams_both_models(
    page: Page, api_base_url: str, org_key: str, client: openai.OpenAI, settings: Settings
) -> None:
    training = client.files.create(file=("tickets.jsonl", chat_jsonl()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        training_file=training.id, model=settings.default_base_model, hyperparameters={"n_epochs": 1}
    )

    _log_in(page, api_base_url, f"/jobs/{job.id}", org_key)
    expect(page.locator("#chart-loss")).to_contain_text("No metrics yet")

    trainer = threading.Thread(target=run_job, args=(settings, registry_from_settings(settings), job.id))
    trainer.start()
    try:  # nobody reloads the page: its script does, while the job runs
        expect(page.locator("#live .status")).to_have_text("succeeded", timeout=TRAINING_TIMEOUT_MS)
    finally:
        trainer.join()
    steps = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    trained_steps = sum(event.type == "metrics" for event in steps)
    expect(page.locator("#chart-loss polyline.train")).to_have_count(1)
    points = page.locator("#chart-loss polyline.train").get_attribute("points") or ""
    assert trained_steps > 1 and len(points.split()) == trained_steps
    expect(page.get_by_text("Evaluation on held-out examples")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "dashboard-job.png", full_page=True)

    page.get_by_role("link", name="Open in playground").click()
    fine_tuned = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    expect(page.locator("#model-a")).to_have_value(settings.default_base_model)
    expect(page.locator("#model-b")).to_have_value(fine_tuned or "")
    page.get_by_label("Prompt").fill("Ticket: my parcel arrived damaged")
    page.get_by_label("Max tokens").fill("12")
    _count_updates(page, "#answer-a")
    _count_updates(page, "#answer-b")
    page.get_by_role("button", name="Send to both").click()
    for side in ("a", "b"):
        expect(page.locator(f"#status-{side}")).to_have_text(re.compile(r"^done"), timeout=120_000)
        assert (page.locator(f"#answer-{side}").text_content() or "").strip()
        assert int(page.locator(f"#answer-{side}").get_attribute("data-updates") or 0) > 2  # streamed, not at once
    page.screenshot(path=ARTIFACTS / "dashboard-playground.png", full_page=True)

    page.get_by_role("link", name="Jobs").click()
    expect(page.get_by_role("row", name=re.compile(job.id))).to_contain_text("succeeded")
    page.screenshot(path=ARTIFACTS / "dashboard-jobs.png", full_page=True)
    page.get_by_role("link", name="Models").click()
    page.screenshot(path=ARTIFACTS / "dashboard-models.png", full_page=True)
    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("row", name=re.compile(re.escape(fine_tuned or "?"))).get_by_role("button", name="Delete").click()
    expect(page.get_by_role("row", name=re.compile(re.escape(fine_tuned or "?")))).to_have_count(0)
    assert fine_tuned not in [model.id for model in client.models.list().data]


def test_a_queued_job_is_cancelled_from_its_page(page: Page, api_base_url: str, client: openai.OpenAI) -> None:
    training = client.files.create(file=("tickets.jsonl", chat_jsonl()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=training.id, model="smollm2-135m-instruct")
    _log_in(page, api_base_url, f"/jobs/{job.id}", client.api_key)

    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel job").click()

    expect(page.locator("#live .status")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_a_refused_upload_lists_its_bad_lines_and_a_good_one_opens_its_report(
    page: Page, api_base_url: str, client: openai.OpenAI, tmp_path: Path
) -> None:
    broken, good = tmp_path / "broken.jsonl", tmp_path / "tickets.jsonl"
    broken.write_bytes(chat_jsonl() + b'{"messages": [oops\n')
    good.write_bytes(chat_jsonl() + chat_jsonl().split(b"\n")[0] + b"\n")  # the first ticket twice
    bad_line = chat_jsonl().count(b"\n") + 1
    _log_in(page, api_base_url, "/files", client.api_key)

    page.get_by_label("Upload a JSONL dataset").set_input_files(broken)
    page.get_by_role("button", name="Upload", exact=True).click()
    refusal = page.locator("#upload-errors table")
    expect(refusal).to_contain_text("refused")
    expect(refusal.get_by_role("row", name=re.compile(f"^{bad_line} invalid_json"))).to_have_count(1)
    page.screenshot(path=ARTIFACTS / "dashboard-upload-refused.png", full_page=True)

    page.get_by_label("Upload a JSONL dataset").set_input_files(good)
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.get_by_role("heading", name="Data report")).to_be_visible()
    expect(page.get_by_role("row", name=re.compile(rf"^{bad_line} "))).to_contain_text("Ticket:")  # the repeated line
    page.screenshot(path=ARTIFACTS / "dashboard-file.png", full_page=True)
