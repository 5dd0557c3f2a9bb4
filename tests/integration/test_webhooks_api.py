"""Webhooks as the openai SDK speaks them: endpoints managed with `client.webhooks`, and the events of jobs and
evaluations finishing delivered to a receiver this test starts, where `client.webhooks.unwrap()` accepts them."""

import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import openai
import pytest
import redis
from sqlalchemy import select, update

from app.api.main import create_app
from app.core.db import transaction
from app.core.lifecycle import JOBS, Status
from app.core.queue import MAINTENANCE_QUEUE
from app.core.settings import Settings
from app.core.tables import WebhookDelivery, WebhookEvent
from app.ml.base_models.from_settings import registry_from_settings
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.jobs import NO_EVALUATION
from tests.helpers.services import new_org_key, sdk_client, serving
from tests.helpers.tiny_models import TINY_MODEL_ID
from tests.helpers.waiting import eventually
from tests.helpers.workers import start_maintenance_worker, stop
from worker.evaluation_runner import run_evaluation
from worker.job_runner import run_job
from worker.webhook_delivery import EVENTS_KEPT_DAYS, deliver_due, expire_old_events

BASE = "smollm2-135m-instruct"
JOB_EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]
EVAL_EVENTS = ["eval.run.succeeded", "eval.run.failed", "eval.run.canceled"]


class Receiver:
    """A webhook receiver on 127.0.0.1: records each request's body and headers, and answers from `answers` (then
    200)."""

    def __init__(self, answers: list[int] | None = None) -> None:
        self.requests: list[tuple[bytes, dict[str, str]]] = []
        self.answers = list(answers or [])
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((body, {name.lower(): value for name, value in self.headers.items()}))
                self.send_response(receiver.answers.pop(0) if receiver.answers else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def webhook_settings(settings: Settings) -> Settings:
    """The run's settings with the test's receivers allowed, and retries due at once."""
    return settings.model_copy(update={"webhook_allowed_hosts": "127.0.0.1", "webhook_first_retry_seconds": 0})


@pytest.fixture(scope="module")
def webhook_api(webhook_settings: Settings) -> Iterator[str]:
    with serving(create_app(webhook_settings)) as url:
        yield url


@pytest.fixture
def org_name() -> str:
    return f"hooks-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def admin(webhook_api: str, settings: Settings, org_name: str) -> openai.OpenAI:
    return sdk_client(webhook_api, new_org_key(settings, org_name, admin=True))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiving = Receiver()
    yield receiving
    receiving.close()


def _job(client: openai.OpenAI) -> str:
    training_file = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    return client.fine_tuning.jobs.create(model=BASE, training_file=training_file).id


def _deliveries(client: openai.OpenAI, endpoint_id: str) -> list[dict]:
    page = client.get(f"/webhook_endpoints/{endpoint_id}/deliveries", cast_to=object)
    return page["data"]  # type: ignore[index]


def test_endpoints_are_created_read_listed_updated_and_deleted_with_the_sdk(
    admin: openai.OpenAI, receiver: Receiver
) -> None:
    created = admin.webhooks.create(name="ops", url=receiver.url, event_types=["fine_tuning.job.succeeded"])
    assert created.object == "webhook_endpoint" and created.signing_secret.startswith("whsec_")
    assert created.signing_secret_hint == f"whsec_...{created.signing_secret[-4:]}"
    assert created.updated_at == created.created_at

    read = admin.webhooks.retrieve(created.id)
    assert (read.name, read.url, read.event_types) == ("ops", receiver.url, ["fine_tuning.job.succeeded"])
    assert "signing_secret" not in read.model_dump()
    second = admin.webhooks.create(name="second", url=receiver.url, event_types=EVAL_EVENTS)
    assert [endpoint.id for endpoint in admin.webhooks.list()] == [second.id, created.id]
    assert [endpoint.id for endpoint in admin.webhooks.list(limit=1, after=second.id)] == [created.id]

    unchanged = admin.webhooks.update(created.id, name="ops")
    assert unchanged.updated_at == created.updated_at
    updated = admin.webhooks.update(created.id, event_types=JOB_EVENTS)
    assert (updated.name, updated.event_types) == ("ops", JOB_EVENTS)

    deleted = admin.webhooks.delete(created.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (created.id, True, "webhook_endpoint.deleted")
    with pytest.raises(openai.NotFoundError):
        admin.webhooks.retrieve(created.id)
    assert admin.webhooks.event_types.list().data == JOB_EVENTS + EVAL_EVENTS


def test_only_admin_keys_manage_endpoints_and_another_organisations_are_not_found(
    admin: openai.OpenAI, webhook_api: str, settings: Settings, org_name: str, receiver: Receiver
) -> None:
    endpoint = admin.webhooks.create(name="ops", url=receiver.url, event_types=JOB_EVENTS)
    plain = sdk_client(webhook_api, new_org_key(settings, org_name))
    with pytest.raises(openai.PermissionDeniedError):
        plain.webhooks.list()
    with pytest.raises(openai.PermissionDeniedError):
        plain.webhooks.create(name="mine", url=receiver.url, event_types=JOB_EVENTS)
    other = sdk_client(webhook_api, new_org_key(settings, f"other-{uuid.uuid4().hex[:10]}", admin=True))
    for act in (
        lambda: other.webhooks.retrieve(endpoint.id),
        lambda: other.webhooks.update(endpoint.id, name="taken"),
        lambda: other.webhooks.rotate_secret(endpoint.id),
        lambda: other.webhooks.delete(endpoint.id),
    ):
        with pytest.raises(openai.NotFoundError):
            act()
    assert list(other.webhooks.list()) == []
    assert admin.webhooks.retrieve(endpoint.id).name == "ops"


def test_past_the_organisations_endpoint_quota_a_create_is_a_429_naming_the_setting(
    webhook_settings: Settings, settings: Settings, org_name: str, receiver: Receiver
) -> None:
    with serving(create_app(webhook_settings.model_copy(update={"max_webhook_endpoints_per_organization": 2}))) as url:
        admin = sdk_client(url, new_org_key(settings, org_name, admin=True))
        for name in ("one", "two"):
            admin.webhooks.create(name=name, url=receiver.url, event_types=JOB_EVENTS)
        with pytest.raises(openai.RateLimitError) as refused:
            admin.webhooks.create(name="three", url=receiver.url, event_types=JOB_EVENTS)
        assert refused.value.body["code"] == "quota_exceeded"  # type: ignore[index]
        assert "LORAPORT_MAX_WEBHOOK_ENDPOINTS_PER_ORGANIZATION=2" in refused.value.message
        admin.webhooks.delete(admin.webhooks.list().data[0].id)
        admin.webhooks.create(name="three", url=receiver.url, event_types=JOB_EVENTS)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://93.184.215.14/hooks", "must use https"),
        ("https://10.0.0.1/hooks", "public addresses only"),
        ("https://169.254.169.254/latest/meta-data", "public addresses only"),
        ("https://[::1]:8443/hooks", "public addresses only"),
        ("ftp://93.184.215.14/hooks", "is not an https URL"),
    ],
)
def test_an_unsafe_url_is_refused_with_a_400_on_create_and_on_update(
    admin: openai.OpenAI, receiver: Receiver, url: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        admin.webhooks.create(name="x", url=url, event_types=JOB_EVENTS)
    assert refused.value.body["param"] == "url" and says in refused.value.message  # type: ignore[index]
    assert refused.value.body["code"] == "invalid_webhook_url"  # type: ignore[index]
    endpoint = admin.webhooks.create(name="x", url=receiver.url, event_types=JOB_EVENTS)
    with pytest.raises(openai.BadRequestError) as refused:
        admin.webhooks.update(endpoint.id, url=url)
    assert says in refused.value.message
    assert admin.webhooks.retrieve(endpoint.id).url == receiver.url


def test_an_event_type_we_do_not_send_is_refused(admin: openai.OpenAI, receiver: Receiver) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        admin.webhooks.create(name="x", url=receiver.url, event_types=["batch.completed"])
    assert refused.value.body["param"] == "event_types.0"  # type: ignore[index]


def test_a_cancelled_job_is_delivered_signed_and_unwrap_accepts_it_but_not_a_tampered_body(
    admin: openai.OpenAI, receiver: Receiver, webhook_settings: Settings
) -> None:
    endpoint = admin.webhooks.create(name="ops", url=receiver.url, event_types=JOB_EVENTS)
    uninterested = admin.webhooks.create(name="evals", url=receiver.url, event_types=EVAL_EVENTS)
    job_id = _job(admin)
    admin.fine_tuning.jobs.cancel(job_id)

    deliver_due(webhook_settings)

    assert len(receiver.requests) == 1
    body, headers = receiver.requests[0]
    event = admin.webhooks.unwrap(body, headers, secret=endpoint.signing_secret)
    assert (event.type, event.data.id, event.object, event.id) == (
        "fine_tuning.job.cancelled",
        job_id,
        "event",
        headers["webhook-id"],
    )
    assert json.loads(body) == {
        "id": event.id,
        "object": "event",
        "created_at": event.created_at,
        "type": "fine_tuning.job.cancelled",
        "data": {"id": job_id},
    }
    with pytest.raises(openai.InvalidWebhookSignatureError):
        admin.webhooks.unwrap(
            body.replace(job_id.encode(), b"ftjob-someoneelse"), headers, secret=endpoint.signing_secret
        )
    [delivery] = _deliveries(admin, endpoint.id)
    assert (delivery["event_id"], delivery["status"], delivery["event_type"]) == (event.id, "delivered", event.type)
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [200]
    assert _deliveries(admin, uninterested.id) == []


def test_an_evaluation_that_succeeds_and_one_cancelled_are_delivered_as_eval_runs(
    admin: openai.OpenAI, receiver: Receiver, webhook_settings: Settings
) -> None:
    endpoint = admin.webhooks.create(name="evals", url=receiver.url, event_types=EVAL_EVENTS)
    file_id = admin.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    body = {"model": TINY_MODEL_ID, "file": file_id, "max_examples": 2, "max_tokens": 4}
    succeeding = admin.post("/evaluations", body=body, cast_to=object)["id"]  # type: ignore[index]
    cancelled = admin.post("/evaluations", body=body, cast_to=object)["id"]  # type: ignore[index]
    admin.post(f"/evaluations/{cancelled}/cancel", cast_to=object)
    run_evaluation(webhook_settings, registry_from_settings(webhook_settings), succeeding)
    assert admin.get(f"/evaluations/{succeeding}", cast_to=object)["status"] == "succeeded"  # type: ignore[index]

    deliver_due(webhook_settings)

    events = [
        admin.webhooks.unwrap(body, headers, secret=endpoint.signing_secret) for body, headers in receiver.requests
    ]
    assert sorted((event.type, event.data.id) for event in events) == sorted(
        [("eval.run.canceled", cancelled), ("eval.run.succeeded", succeeding)]
    )


def test_a_job_that_trains_and_succeeds_and_one_that_fails_are_delivered(
    admin: openai.OpenAI, receiver: Receiver, webhook_settings: Settings
) -> None:
    endpoint = admin.webhooks.create(name="jobs", url=receiver.url, event_types=JOB_EVENTS)
    training_file = admin.files.create(file=("t.jsonl", chat_jsonl(TICKETS * 2)), purpose="fine-tune").id
    create = {"model": TINY_MODEL_ID, "training_file": training_file, "hyperparameters": {"n_epochs": 1}}
    succeeding = admin.fine_tuning.jobs.create(**create, extra_body=NO_EVALUATION).id  # type: ignore[arg-type]
    failing = admin.fine_tuning.jobs.create(**create, extra_body=NO_EVALUATION).id  # type: ignore[arg-type]
    run_job(webhook_settings, registry_from_settings(webhook_settings), succeeding)
    limited = webhook_settings.model_copy(update={"job_time_limit_seconds": 0.001})
    run_job(limited, registry_from_settings(limited), failing)
    assert admin.fine_tuning.jobs.retrieve(succeeding).status == "succeeded"
    assert admin.fine_tuning.jobs.retrieve(failing).status == "failed"

    deliver_due(webhook_settings)

    events = [
        admin.webhooks.unwrap(body, headers, secret=endpoint.signing_secret) for body, headers in receiver.requests
    ]
    assert sorted((event.type, event.data.id) for event in events) == [
        ("fine_tuning.job.failed", failing),
        ("fine_tuning.job.succeeded", succeeding),
    ]


def test_a_receiver_that_fails_twice_gets_the_third_delivery_with_the_same_id_and_body(
    admin: openai.OpenAI, webhook_settings: Settings
) -> None:
    receiver = Receiver(answers=[500, 503])
    try:
        endpoint = admin.webhooks.create(name="flaky", url=receiver.url, event_types=JOB_EVENTS)
        admin.fine_tuning.jobs.cancel(_job(admin))
        for _ in range(3):
            deliver_due(webhook_settings)  # retries are due at once with these settings
    finally:
        receiver.close()

    assert len(receiver.requests) == 3
    assert len({body for body, _ in receiver.requests}) == 1
    assert len({headers["webhook-id"] for _, headers in receiver.requests}) == 1
    body, headers = receiver.requests[-1]
    assert admin.webhooks.unwrap(body, headers, secret=endpoint.signing_secret).type == "fine_tuning.job.cancelled"
    [delivery] = _deliveries(admin, endpoint.id)
    assert delivery["status"] == "delivered" and delivery["next_attempt_at"] is None
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [500, 503, 200]
    assert all(attempt["attempted_at"] >= delivery["created_at"] for attempt in delivery["attempts"])


def test_a_delivery_still_failing_a_day_after_its_event_is_marked_failed(
    admin: openai.OpenAI, webhook_settings: Settings
) -> None:
    receiver = Receiver(answers=[500] * 10)
    try:
        endpoint = admin.webhooks.create(name="down", url=receiver.url, event_types=JOB_EVENTS)
        admin.fine_tuning.jobs.cancel(_job(admin))
        deliver_due(webhook_settings)
        [delivery] = _deliveries(admin, endpoint.id)
        assert delivery["status"] == "pending"
        with transaction(webhook_settings.require("database_url")) as session:
            session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == delivery["event_id"])
                .values(created_at=WebhookEvent.created_at - timedelta(hours=webhook_settings.webhook_retry_hours))
            )
        deliver_due(webhook_settings)
        deliver_due(webhook_settings)
    finally:
        receiver.close()

    [delivery] = _deliveries(admin, endpoint.id)
    assert (delivery["status"], delivery["next_attempt_at"]) == ("failed", None)
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [500, 500]


def test_events_older_than_the_retention_are_deleted_with_their_deliveries_and_recent_ones_kept(
    admin: openai.OpenAI, receiver: Receiver, webhook_settings: Settings
) -> None:
    endpoint = admin.webhooks.create(name="ops", url=receiver.url, event_types=JOB_EVENTS)
    admin.fine_tuning.jobs.cancel(_job(admin))
    admin.fine_tuning.jobs.cancel(_job(admin))
    deliver_due(webhook_settings)
    recent, old = _deliveries(admin, endpoint.id)  # newest first
    with transaction(webhook_settings.require("database_url")) as session:
        session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == old["event_id"])
            .values(created_at=WebhookEvent.created_at - timedelta(days=EVENTS_KEPT_DAYS, minutes=1))
        )
        assert expire_old_events(session) >= 1

    assert [delivery["id"] for delivery in _deliveries(admin, endpoint.id)] == [recent["id"]]


def test_after_rotate_secret_the_old_secret_is_refused_and_the_new_one_accepted(
    admin: openai.OpenAI, receiver: Receiver
) -> None:
    endpoint = admin.webhooks.create(name="ops", url=receiver.url, event_types=JOB_EVENTS)
    rotated = admin.webhooks.rotate_secret(endpoint.id)
    assert rotated.signing_secret != endpoint.signing_secret
    assert rotated.signing_secret_hint == f"whsec_...{rotated.signing_secret[-4:]}"

    result = admin.webhooks.test(endpoint.id, event_type="fine_tuning.job.succeeded")

    assert (result.status_code, result.success, result.webhook_endpoint_id) == (200, True, endpoint.id)
    body, headers = receiver.requests[-1]
    assert admin.webhooks.unwrap(body, headers, secret=rotated.signing_secret).type == "fine_tuning.job.succeeded"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        admin.webhooks.unwrap(body, headers, secret=endpoint.signing_secret)

    kept = admin.webhooks.rotate_secret(endpoint.id, keep_old_secret_active_for_24_hours=True)
    admin.webhooks.test(endpoint.id, event_type="eval.run.failed")
    body, headers = receiver.requests[-1]
    for secret in (kept.signing_secret, rotated.signing_secret):
        assert admin.webhooks.unwrap(body, headers, secret=secret).type == "eval.run.failed"


def test_a_test_event_reports_the_receivers_status_code(admin: openai.OpenAI) -> None:
    receiver = Receiver(answers=[418])
    try:
        endpoint = admin.webhooks.create(name="teapot", url=receiver.url, event_types=JOB_EVENTS)
        result = admin.webhooks.test(endpoint.id, event_type="fine_tuning.job.failed")
    finally:
        receiver.close()
    assert (result.status_code, result.event_type, result.object) == (
        418,
        "fine_tuning.job.failed",
        "webhook_endpoint.test",
    )


def test_a_finish_that_rolls_back_leaves_no_event(admin: openai.OpenAI, receiver: Receiver, settings: Settings) -> None:
    admin.webhooks.create(name="ops", url=receiver.url, event_types=JOB_EVENTS)
    job_id = _job(admin)

    with pytest.raises(RuntimeError), transaction(settings.require("database_url")) as session:
        assert JOBS.move(session, job_id, (Status.QUEUED,), Status.CANCELLED)
        assert session.scalar(select(WebhookEvent.id).where(WebhookEvent.body.contains(job_id))) is not None
        raise RuntimeError("the rest of the finish failed")

    with transaction(settings.require("database_url")) as session:
        assert session.scalar(select(WebhookEvent.id).where(WebhookEvent.body.contains(job_id))) is None
        assert (
            session.scalar(select(WebhookDelivery.id).join(WebhookEvent).where(WebhookEvent.body.contains(job_id)))
            is None
        )
    assert admin.fine_tuning.jobs.retrieve(job_id).status == "queued"


def _maintenance(settings: Settings, tmp_path: Path, interval_s: int) -> subprocess.Popen:
    return start_maintenance_worker(
        settings,
        tmp_path / "beat-schedule",
        LORAPORT_RECONCILE_INTERVAL_SECONDS=str(interval_s),
        LORAPORT_WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
    )


def test_the_message_sent_after_commit_has_the_maintenance_worker_deliver_at_once(
    admin: openai.OpenAI, receiver: Receiver, settings: Settings, tmp_path: Path
) -> None:
    endpoint = admin.webhooks.create(name="ops", url=receiver.url, event_types=JOB_EVENTS)
    job_id = _job(admin)
    admin.fine_tuning.jobs.cancel(job_id)
    assert redis.Redis.from_url(settings.require("redis_url")).llen(MAINTENANCE_QUEUE) >= 1

    worker = _maintenance(settings, tmp_path, interval_s=3600)  # no sweep within the test: the message does it
    try:
        eventually(lambda: receiver.requests, timeout=60, what="the delivery the message asked for")
    finally:
        stop(worker)
    body, headers = receiver.requests[0]
    assert admin.webhooks.unwrap(body, headers, secret=endpoint.signing_secret).data.id == job_id


def test_a_delivery_whose_message_was_lost_is_sent_by_the_sweep(
    admin: openai.OpenAI, receiver: Receiver, settings: Settings, tmp_path: Path
) -> None:
    endpoint = admin.webhooks.create(name="ops", url=receiver.url, event_types=JOB_EVENTS)
    job_id = _job(admin)
    admin.fine_tuning.jobs.cancel(job_id)
    redis.Redis.from_url(settings.require("redis_url")).delete(MAINTENANCE_QUEUE)  # the broker lost it

    worker = _maintenance(settings, tmp_path, interval_s=1)
    try:
        eventually(lambda: receiver.requests, timeout=60, what="the sweep's delivery")
    finally:
        stop(worker)
    body, headers = receiver.requests[0]
    assert admin.webhooks.unwrap(body, headers, secret=endpoint.signing_secret).data.id == job_id
