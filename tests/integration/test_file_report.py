"""The data report catches what makes fine-tunes fail quietly, naming the lines, through the API."""

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from sqlalchemy import select

from app.api.files import report_runs
from app.api.files.report_threads import report_threads
from app.core.db import transaction
from app.core.settings import Settings
from app.core.tables import FileTokenStats
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.reports import finished_report, report_now
from tests.helpers.tiny_models import TINY_MODEL_ID
from tests.helpers.waiting import eventually


def line(question: str, answer: str) -> bytes:
    messages = [{"role": "user", "content": f"Ticket: {question}"}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": messages}).encode() + b"\n"


def report(client: openai.OpenAI, file_id: str, **query: str) -> dict:
    return finished_report(client, file_id, **query)


@pytest.fixture
def messy_file(client: openai.OpenAI) -> str:
    content = (
        chat_jsonl()  # lines 1-12, every answer "category: …\npriority: …\nteam: …"
        + line("  my INVOICE charged me twice this month. ", TICKETS[0][1])  # 13: line 1 again, other case/space
        + line("How do I export my data to CSV?", "category: billing\npriority: high\nteam: payments")  # 14: vs line 2
        + line("Is there a mobile app?", "Yes, for iOS and Android.")  # 15: breaks the answer shape
        + line("What is your address?", "?")  # 16: a one-character answer
    )
    return client.files.create(file=("messy.jsonl", content), purpose="fine-tune").id


def test_report_names_duplicates_conflicts_shape_breaks_and_short_answers(
    client: openai.OpenAI, messy_file: str
) -> None:
    body = report(client, messy_file)
    assert body["object"] == "file.report" and body["format"] == "chat"
    assert body["counts"]["examples"] == 16
    assert body["duplicates"]["groups"] == [[1, 13]]
    assert [group["lines"] for group in body["conflicts"]["groups"]] == [[2, 14]]
    assert body["shape"]["lines"] == [15, 16]
    assert body["short_targets"]["lines"] == [16]
    codes = {warning["code"] for warning in body["warnings"]}
    assert {"duplicate_examples", "conflicting_targets", "few_examples"} <= codes


def test_report_counts_tokens_with_the_base_models_tokenizer(
    client: openai.OpenAI, messy_file: str, settings: Settings
) -> None:
    tokens = report(client, messy_file, model=settings.default_base_model)["tokens"]
    assert tokens["model"] == settings.default_base_model and tokens["examples"] == 16
    assert 0 < tokens["min"] <= tokens["mean"] <= tokens["p95"] <= tokens["max"] < tokens["max_length"]
    assert tokens["total_tokens"] >= 16 * tokens["min"]
    assert tokens["over_max_length"]["count"] == 0
    assert (
        tokens["estimated_training_tokens_auto"] == tokens["total_tokens"] * report(client, messy_file)["n_epochs_auto"]
    )
    with pytest.raises(openai.NotFoundError):
        report(client, messy_file, model="no-such-model")


def test_file_status_details_sum_up_the_report(client: openai.OpenAI) -> None:
    content = chat_jsonl() + chat_jsonl(TICKETS[:1])  # line 13 repeats line 1
    file_id = client.files.create(file=("dup.jsonl", content), purpose="fine-tune").id
    details = eventually(  # computed right after the upload answered
        lambda: "warning" in (text := client.files.retrieve(file_id).status_details or "") and text,
        timeout=30,
        what="the report's warnings in status_details",
    )
    assert details.startswith("13 chat examples") and "duplicate" in details.lower()


def test_another_organisation_cannot_read_the_report(
    client: openai.OpenAI, other_client: openai.OpenAI, messy_file: str
) -> None:
    with pytest.raises(openai.NotFoundError):
        report(other_client, messy_file)


def held_children(monkeypatch: pytest.MonkeyPatch, holds: int) -> tuple[threading.Event, threading.Event, list]:
    """Report computations start their child process only once `release` is set (the first `holds` of them); `calls`
    records each computation's target and arguments, `computing` is set when the first is held."""
    computing, release, calls = threading.Event(), threading.Event(), []
    run = report_runs.run_in_child

    def held(name: str, niceness: int, target: Callable[..., None], *args: object) -> int:
        calls.append((target.__name__, *args[1:]))
        if len(calls) <= holds:
            computing.set()
            release.wait(timeout=120)
        return run(name, niceness, target, *args)

    monkeypatch.setattr(report_runs, "run_in_child", held)
    return computing, release, calls


def test_concurrent_first_requests_compute_the_token_counts_once(
    http: httpx.Client, client: openai.OpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit #5: each first request computed the report inline, holding its connection; the losers got a 500."""
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    finished_report(client, file_id)  # the default model's counts, and the structure, out of the way
    other_model = TINY_MODEL_ID
    computing, release, calls = held_children(monkeypatch, holds=1)  # every request answers while it is held
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: http.get(f"/v1/files/{file_id}/report?model={other_model}"), range(16)))
    computing.wait(timeout=60)
    release.set()

    assert sorted({answer.status_code for answer in answers}) == [202]
    assert {answer.json()["status"] for answer in answers} == {"pending"}
    reports = [finished_report(client, file_id, model=other_model) for _ in range(16)]
    assert [call[0] for call in calls] == ["compute_tokens"]
    assert all(body == reports[0] for body in reports) and reports[0]["status"] == "ready"
    assert reports[0]["tokens"]["model"] == other_model
    with transaction(settings.require("database_url")) as session:
        rows = session.scalars(select(FileTokenStats.model).where(FileTokenStats.file_id == file_id))
        assert sorted(rows) == sorted([settings.default_base_model, other_model])


def test_reports_are_computed_outside_the_api_process(client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Profiling a large file is pure Python: in the API process it held the lock that every request needs."""

    def not_here(*_: object) -> object:
        raise AssertionError("computed in the API process")

    monkeypatch.setattr(report_runs, "profile", not_here)
    monkeypatch.setattr(report_runs, "token_stats", not_here)
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    body = finished_report(client, file_id, model=TINY_MODEL_ID)
    assert body["status"] == "ready" and body["counts"]["examples"] == len(TICKETS)
    assert body["tokens"]["model"] == TINY_MODEL_ID


def test_a_report_whose_process_died_is_computed_again_by_the_next_request(
    client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child killed (out of memory, say) stored nothing: its claim is given back at once, not after hours."""
    run, deaths = report_runs.run_in_child, list[str]()

    def first_dies(name: str, niceness: int, target: Callable[..., None], *args: object) -> int:
        if not deaths:
            deaths.append(target.__name__)
            return -9
        return run(name, niceness, target, *args)

    monkeypatch.setattr(report_runs, "run_in_child", first_dies)
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    assert finished_report(client, file_id)["counts"]["examples"] == len(TICKETS)
    assert deaths == ["compute_structure"]


def test_a_report_computed_after_the_upload_answers_pending_until_then(
    client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, release, _ = held_children(monkeypatch, holds=1)
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    pending = report_now(client, file_id)
    assert pending["status"] == "pending" and "counts" not in pending
    release.set()
    assert finished_report(client, file_id)["counts"]["examples"] == len(TICKETS)


def test_a_report_that_cannot_be_computed_says_so(client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> object:
        raise ValueError("a bug")

    def in_this_process(name: str, niceness: int, target: Callable[..., None], *args: object) -> int:
        target(*args)  # so that the broken `profile` is the one it calls
        return 0

    monkeypatch.setattr(report_runs, "run_in_child", in_this_process)
    monkeypatch.setattr(report_runs, "profile", broken)
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    failed = finished_report(client, file_id)
    assert failed["status"] == "failed" and failed["error"]["code"] == "report_failed"
    assert "ValueError" in failed["error"]["message"]


def test_a_stopping_api_gives_back_the_reports_it_was_computing(
    client: openai.OpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its report threads do not hold up its exit; what they held is claimed again by the next request at once,
    not after `report_stale_after_seconds`."""
    computing, release, calls = held_children(monkeypatch, holds=1)
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    assert computing.wait(timeout=60)

    # what the API process does at exit
    report_threads(settings.report_workers).release_unfinished()

    assert finished_report(client, file_id)["counts"]["examples"] == len(TICKETS)
    assert [call[0] for call in calls].count("compute_structure") == 2
    release.set()
