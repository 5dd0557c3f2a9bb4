"""Asking for an evaluation: what is checked when it is created, how one that cannot run ends, and the lifecycle it
shares with jobs: sent by the reaper when the broker was down, cancelled queued or running, re-queued when its worker
dies, given back when a service goes down."""

import threading
import time
from datetime import UTC, datetime, timedelta

import botocore.exceptions
import openai
import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.db import transaction
from app.core.queue import producer
from app.core.settings import Settings
from app.core.tables import Evaluation
from app.ml.base_models.from_settings import registry_from_settings
from tests.helpers.datasets import chat_jsonl
from tests.helpers.evaluations import busy_file, evaluation_row, retrieve_evaluation, tiny_model_api
from tests.helpers.tiny_models import TINY_MODEL_ID
from tests.helpers.waiting import eventually
from worker.broker_messages import work_with_messages
from worker.evaluation_runner import run_evaluation
from worker.reaper import reap_expired_leases, redispatch_lost

BASE = "smollm2-135m-instruct"


@pytest.fixture
def file_id(client: openai.OpenAI) -> str:
    return client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id


def _create(client: openai.OpenAI, **body: object) -> dict:
    return client.post("/evaluations", body=body, cast_to=object)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("body", "error", "param"),
    [
        ({"model": "no-such-model"}, openai.NotFoundError, "model"),
        ({"model": BASE, "baseline": "ft:no-such-model"}, openai.NotFoundError, "baseline"),
        ({"model": BASE, "max_examples": 0}, openai.BadRequestError, "max_examples"),
        ({"model": BASE, "max_tokens": 5000}, openai.BadRequestError, "max_tokens"),
        ({"model": BASE, "temperature": 1}, openai.BadRequestError, "temperature"),
    ],
)
def test_a_bad_request_names_the_field(
    client: openai.OpenAI, file_id: str, body: dict, error: type[openai.APIStatusError], param: str
) -> None:
    with pytest.raises(error) as raised:
        _create(client, file=file_id, **body)
    assert raised.value.body["param"] == param  # type: ignore[index]


def test_another_organisations_file_is_not_found(client: openai.OpenAI, other_client: openai.OpenAI) -> None:
    theirs = other_client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    with pytest.raises(openai.NotFoundError) as raised:
        _create(client, model=BASE, file=theirs)
    assert raised.value.body["param"] == "file" and theirs in raised.value.message  # type: ignore[index]


def test_an_evaluation_whose_file_was_deleted_fails_saying_so(
    client: openai.OpenAI, other_client: openai.OpenAI, file_id: str, settings: Settings
) -> None:
    created = _create(client, model=BASE, file=file_id)
    assert (created["status"], created["baseline"], created["report"]) == ("queued", BASE, None)
    client.files.delete(file_id)

    run_evaluation(settings, registry_from_settings(settings), created["id"])

    done = client.get(f"/evaluations/{created['id']}", cast_to=object)
    assert done["status"] == "failed" and done["report"] is None  # type: ignore[index]
    assert done["error"]["code"] == "file_not_found" and file_id in done["error"]["message"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        other_client.get(f"/evaluations/{created['id']}", cast_to=object)


def test_an_evaluation_created_while_the_broker_is_down_is_queued_and_the_reaper_sends_it(
    settings: Settings, org_key: str, file_id: str
) -> None:
    broker_down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})  # nothing listens on port 1
    with TestClient(create_app(broker_down)) as api:
        created = api.post(
            "/v1/evaluations",
            headers={"Authorization": f"Bearer {org_key}"},
            json={"model": BASE, "file": file_id, "max_examples": 1},
        )
    assert created.status_code == 200 and created.json()["status"] == "queued"
    evaluation_id = created.json()["id"]
    assert evaluation_id not in work_with_messages(settings.require("redis_url"))  # stored, but never sent

    assert evaluation_id in redispatch_lost(settings)
    assert evaluation_id in work_with_messages(settings.require("redis_url"))
    assert evaluation_id not in redispatch_lost(settings)  # sent once


def test_a_queued_evaluation_is_cancelled_and_never_runs(
    client: openai.OpenAI, file_id: str, settings: Settings
) -> None:
    created = _create(client, model=BASE, file=file_id)

    cancelled = client.post(f"/evaluations/{created['id']}/cancel", cast_to=object)

    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None  # type: ignore[index]
    run_evaluation(settings, registry_from_settings(settings), created["id"])  # its message arrives all the same
    done = retrieve_evaluation(client, created["id"])
    assert (done["status"], done["report"], done["error"]) == ("cancelled", None, None)
    assert evaluation_row(settings, created["id"]).attempt == 0  # never claimed
    with pytest.raises(openai.BadRequestError) as raised:
        client.post(f"/evaluations/{created['id']}/cancel", cast_to=object)
    assert "has already cancelled" in raised.value.message


def test_a_running_evaluation_stops_soon_after_a_cancel_and_writes_no_report(settings: Settings, org_key: str) -> None:
    with tiny_model_api(settings, org_key) as client:
        file_id = client.files.create(file=("busy.jsonl", busy_file(1000)), purpose="fine-tune").id
        # Not cancelled, it runs on for about 15 s on 2 cores; cancelled, it stops at the next answer after its
        # status check (every 2 s), 1 to 3 s later.
        created = _create(client, model=TINY_MODEL_ID, file=file_id, max_examples=1000, max_tokens=256)
        errors: list[BaseException] = []
        runner = threading.Thread(target=_run_catching, args=(settings, created["id"], errors))
        runner.start()
        eventually(lambda: evaluation_row(settings, created["id"]).status == "running", what="the claim")
        time.sleep(1)  # into the answers

        client.post(f"/evaluations/{created['id']}/cancel", cast_to=object)
        cancelled_at = time.monotonic()
        runner.join(timeout=120)

        stopped_after = time.monotonic() - cancelled_at
        assert not runner.is_alive() and errors == []
        assert stopped_after < 8, f"ran on for {stopped_after:.1f} s after the cancel"
        done = retrieve_evaluation(client, created["id"])
        assert (done["status"], done["report"], done["error"]) == ("cancelled", None, None)


def _run_catching(settings: Settings, evaluation_id: str, errors: list[BaseException]) -> None:
    try:
        run_evaluation(settings, registry_from_settings(settings), evaluation_id)
    except BaseException as error:
        errors.append(error)


def test_the_reaper_requeues_an_evaluation_whose_worker_died_and_fails_one_out_of_attempts(
    client: openai.OpenAI, file_id: str, settings: Settings
) -> None:
    lost = _create(client, model=BASE, file=file_id)["id"]
    spent = _create(client, model=BASE, file=file_id)["id"]
    with transaction(settings.require("database_url")) as session:
        for evaluation_id, attempt in ((lost, 1), (spent, settings.max_job_attempts)):
            row = session.get_one(Evaluation, evaluation_id)
            row.status, row.attempt, row.lease_expires_at = "running", attempt, datetime.now(UTC) - timedelta(seconds=1)
    producer(settings).control.purge()  # their messages were taken by the worker that died

    requeued = reap_expired_leases(settings)

    assert lost in requeued and spent not in requeued
    assert retrieve_evaluation(client, lost)["status"] == "queued"
    assert lost in work_with_messages(settings.require("redis_url"))
    failed = retrieve_evaluation(client, spent)
    assert failed["status"] == "failed" and failed["error"]["code"] == "worker_lost"


def _storage_down(*_: object, **__: object) -> None:
    raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3.example")


def test_an_outage_gives_the_evaluation_back_and_its_last_attempt_fails_naming_the_service(
    client: openai.OpenAI, file_id: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.evaluation_runner.stream_examples", _storage_down)
    evaluation_id = _create(client, model=BASE, file=file_id)["id"]
    producer(settings).control.purge()  # its message was taken, as by the worker that runs it

    run_evaluation(settings, registry_from_settings(settings), evaluation_id)

    row = evaluation_row(settings, evaluation_id)
    assert (row.status, row.attempt, row.report) == ("queued", 1, None)
    assert row.retry_at is not None and row.retry_at > datetime.now(UTC)
    assert evaluation_id not in redispatch_lost(settings)  # not before its retry time
    with transaction(settings.require("database_url")) as session:
        session.get_one(Evaluation, evaluation_id).attempt = settings.max_job_attempts - 1

    run_evaluation(settings, registry_from_settings(settings), evaluation_id)

    failed = retrieve_evaluation(client, evaluation_id)
    assert failed["status"] == "failed" and failed["error"]["code"] == "service_unavailable"
    assert failed["error"]["message"].startswith("The evaluation stopped 3 times because object storage was")
