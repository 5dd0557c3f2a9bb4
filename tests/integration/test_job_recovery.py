"""PostgreSQL owns job state: duplicate deliveries do nothing, dead workers' jobs are re-queued or failed, jobs
without a message in the broker are sent again; merged-model exports alike."""

from datetime import UTC, datetime, timedelta

import botocore.exceptions
import httpx
import openai
import pytest
import redis
import torch
from fastapi.testclient import TestClient
from kombu import Connection
from sqlalchemy import select

from app.api.main import create_app
from app.core.db import transaction
from app.core.queue import CUDA_TRAINING_QUEUE, TRAINING_QUEUE, producer
from app.core.settings import Settings
from app.core.tables import FineTuningJob, JobEvent, ModelExport
from app.ml.base_models.from_settings import registry_from_settings
from tests.helpers.datasets import chat_jsonl
from tests.helpers.jobs import finished_job_with_model
from tests.helpers.workers import forget_other_jobs
from worker.broker_messages import work_with_messages
from worker.job_runner import run_job
from worker.reaper import reap_expired_leases, redispatch_lost

RESENT = "The job had no message in the broker (it was down, or lost its data); sent again"


def _job_in_state(client: openai.OpenAI, settings: Settings, status: str, lease: timedelta, attempt: int) -> str:
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    job_id = client.fine_tuning.jobs.create(model=settings.default_base_model, training_file=file_id).id
    with transaction(settings.require("database_url")) as session:
        job = session.get_one(FineTuningJob, job_id)
        job.status, job.attempt, job.lease_expires_at = status, attempt, datetime.now(UTC) + lease
    return job_id


def _events(settings: Settings, job_id: str) -> list[str]:
    with transaction(settings.require("database_url")) as session:
        return list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def test_a_duplicate_delivery_of_a_running_job_does_nothing(client: openai.OpenAI, settings: Settings) -> None:
    job_id = _job_in_state(client, settings, "running", timedelta(minutes=5), attempt=1)
    before = _events(settings, job_id)
    run_job(settings, registry_from_settings(settings), job_id)
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "running"
    assert _events(settings, job_id) == before


def test_a_message_for_a_finished_job_does_nothing(client: openai.OpenAI, settings: Settings) -> None:
    job_id = _job_in_state(client, settings, "cancelled", timedelta(0), attempt=1)
    run_job(settings, registry_from_settings(settings), job_id)
    assert client.fine_tuning.jobs.retrieve(job_id).status == "cancelled"


def test_reaper_requeues_a_job_whose_lease_expired(client: openai.OpenAI, settings: Settings) -> None:
    job_id = _job_in_state(client, settings, "running", -timedelta(seconds=1), attempt=1)
    live_id = _job_in_state(client, settings, "running", timedelta(minutes=5), attempt=1)
    assert job_id in reap_expired_leases(settings)
    assert client.fine_tuning.jobs.retrieve(job_id).status == "queued"
    assert client.fine_tuning.jobs.retrieve(live_id).status == "running"
    assert "Worker lost; restarting the job (attempt 2)" in _events(settings, job_id)


def test_reaper_fails_a_job_out_of_attempts(client: openai.OpenAI, settings: Settings) -> None:
    job_id = _job_in_state(client, settings, "running", -timedelta(seconds=1), attempt=settings.max_job_attempts)
    assert job_id not in reap_expired_leases(settings)
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "failed" and job.error is not None and job.error.code == "worker_lost"


def test_a_job_whose_training_file_was_deleted_fails_naming_it(client: openai.OpenAI, settings: Settings) -> None:
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    job_id = client.fine_tuning.jobs.create(model=settings.default_base_model, training_file=file_id).id
    client.files.delete(file_id)
    run_job(settings, registry_from_settings(settings), job_id)
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "failed" and job.error is not None
    assert job.error.param == "training_file" and file_id in job.error.message


def test_a_job_created_while_the_broker_is_down_is_queued_and_the_reaper_sends_it(
    settings: Settings, org_key: str, client: openai.OpenAI
) -> None:
    producer(settings).control.purge()  # no other job's message that a worker would serve it with
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    broker_down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})  # nothing listens on port 1
    with TestClient(create_app(broker_down)) as api:
        created = api.post(
            "/v1/fine_tuning/jobs",
            headers={"Authorization": f"Bearer {org_key}"},
            json={"model": settings.default_base_model, "training_file": file_id},
        )
    assert created.status_code == 200 and created.json()["status"] == "queued"
    job_id = created.json()["id"]
    assert job_id not in work_with_messages(settings.require("redis_url"))  # stored, but never sent

    broker = redis.Redis.from_url(settings.require("redis_url"))
    waiting = broker.llen("training")
    assert job_id in redispatch_lost(settings)
    assert broker.llen("training") >= waiting + 1
    assert job_id in work_with_messages(settings.require("redis_url"))
    assert job_id not in redispatch_lost(settings)  # sent once
    assert client.fine_tuning.jobs.retrieve(job_id).status == "queued"
    assert RESENT in _events(settings, job_id)


def test_a_job_an_older_version_left_validating_files_is_sent_and_queued(
    client: openai.OpenAI, settings: Settings
) -> None:
    """Versions that marked a job queued only once the broker took its message left it `validating_files` when
    the broker was down."""
    job_id = _job_in_state(client, settings, "validating_files", timedelta(0), attempt=0)
    producer(settings).control.purge()  # no message anywhere
    assert job_id in redispatch_lost(settings)
    assert job_id in work_with_messages(settings.require("redis_url"))
    assert client.fine_tuning.jobs.retrieve(job_id).status == "queued"
    assert _events(settings, job_id)[-1] == "Files validated; job queued for a training worker"


def test_running_out_of_memory_fails_with_advice(
    client: openai.OpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def exhausted(*_: object, **__: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("worker.fine_tune.train_lora", exhausted)
    job_id = _job_in_state(client, settings, "queued", timedelta(0), attempt=0)
    run_job(settings, registry_from_settings(settings), job_id)
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "failed" and job.error is not None and job.error.code == "out_of_memory"
    assert "smaller batch_size" in job.error.message and job.error.param == "hyperparameters.batch_size"


def _storage_down(*_: object, **__: object) -> None:
    raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3.example")


def test_an_outage_gives_the_job_back_until_its_retry_time_then_it_is_sent_again(
    client: openai.OpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.fine_tune.train_lora", _storage_down)
    job_id = _job_in_state(client, settings, "queued", timedelta(0), attempt=0)
    producer(settings).control.purge()  # its message was taken, as by the worker that ran it

    run_job(settings, registry_from_settings(settings), job_id)

    assert client.fine_tuning.jobs.retrieve(job_id).status == "queued"
    assert f"in {settings.outage_retry_seconds:g} s (attempt 2 of 3)" in _events(settings, job_id)[-1]
    assert job_id not in redispatch_lost(settings)  # not before its retry time
    with transaction(settings.require("database_url")) as session:
        session.get_one(FineTuningJob, job_id).retry_at = datetime.now(UTC) - timedelta(seconds=1)
    assert job_id in redispatch_lost(settings)
    assert _events(settings, job_id)[-1] == "Sent to a worker again after the outage"


def test_an_outage_on_the_last_attempt_fails_the_job_naming_the_service(
    client: openai.OpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.fine_tune.train_lora", _storage_down)
    job_id = _job_in_state(client, settings, "queued", timedelta(0), attempt=settings.max_job_attempts - 1)

    run_job(settings, registry_from_settings(settings), job_id)

    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "failed" and job.error is not None and job.error.code == "service_unavailable"
    assert job.error.message.startswith("Training stopped 3 times because object storage was unavailable")


def test_a_queued_job_whose_message_the_broker_lost_is_sent_again(client: openai.OpenAI, settings: Settings) -> None:
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    job_id = client.fine_tuning.jobs.create(model=settings.default_base_model, training_file=file_id).id
    assert client.fine_tuning.jobs.retrieve(job_id).status == "queued"
    assert job_id not in redispatch_lost(settings)  # its message is waiting in the queue

    producer(settings).control.purge()  # as when Redis restarts without its data
    assert job_id in redispatch_lost(settings)
    assert job_id in work_with_messages(settings.require("redis_url"))
    assert job_id not in redispatch_lost(settings)
    assert RESENT in _events(settings, job_id)


def test_a_message_delivered_but_not_yet_acknowledged_counts_as_in_the_broker(
    client: openai.OpenAI, settings: Settings
) -> None:
    producer(settings).control.purge()
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    job_id = client.fine_tuning.jobs.create(model=settings.default_base_model, training_file=file_id).id
    with Connection(settings.require("redis_url")) as connection:
        queue = connection.SimpleQueue("training")
        delivered = queue.get(timeout=5)  # as a worker holds it while the task runs (late acknowledgement)
        assert delivered.headers["id"].startswith(f"train-{job_id}.")
        assert redis.Redis.from_url(settings.require("redis_url")).llen("training") == 0
        assert job_id in work_with_messages(settings.require("redis_url"))
        assert job_id not in redispatch_lost(settings)
        delivered.requeue()
        queue.close()


def test_a_job_whose_message_woke_a_worker_for_another_job_is_served_by_that_job_s_message(
    client: openai.OpenAI, settings: Settings
) -> None:
    """Training messages are doorbells (app.core.fair_queue): the one left in the queue serves the waiting job, so
    the reaper sends nothing; only when that one is lost too is the job sent again."""
    forget_other_jobs(settings)  # other jobs without a message would share the doorbell
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    waiting = client.fine_tuning.jobs.create(model=settings.default_base_model, training_file=file_id).id
    ran = client.fine_tuning.jobs.create(model=settings.default_base_model, training_file=file_id).id
    with Connection(settings.require("redis_url")) as connection:
        queue = connection.SimpleQueue("training")
        taken = queue.get(timeout=5)  # the first job's message, taken by a worker that claimed the other job
        assert taken.headers["id"].startswith(f"train-{waiting}.")
        taken.ack()
        queue.close()
    with transaction(settings.require("database_url")) as session:
        job = session.get_one(FineTuningJob, ran)
        job.status, job.attempt, job.lease_expires_at = "running", 1, datetime.now(UTC) + timedelta(minutes=5)

    assert waiting not in redispatch_lost(settings)
    assert RESENT not in _events(settings, waiting)

    producer(settings).control.purge()  # the other job's message is lost as well
    assert waiting in redispatch_lost(settings)
    assert RESENT in _events(settings, waiting)


def _export(http: httpx.Client, settings: Settings, client: openai.OpenAI) -> tuple[str, str]:
    """(model id, export id) of a merged-model export asked for through the API."""
    _, model_id, _ = finished_job_with_model(settings, client)
    created = http.post(f"/v1/models/{model_id}/exports")
    assert created.status_code == 200 and created.json()["status"] == "queued", created.text
    return model_id, created.json()["id"]


def _export_running(settings: Settings, export_id: str, attempt: int, started: timedelta) -> None:
    """As a worker that claimed it `started` ago leaves it."""
    with transaction(settings.require("database_url")) as session:
        export = session.get_one(ModelExport, export_id)
        export.status, export.attempt, export.started_at = "running", attempt, datetime.now(UTC) - started


def test_a_queued_export_whose_message_the_broker_lost_is_sent_again(
    http: httpx.Client, settings: Settings, client: openai.OpenAI
) -> None:
    model_id, export_id = _export(http, settings, client)
    assert export_id in work_with_messages(settings.require("redis_url"))
    assert export_id not in redispatch_lost(settings)  # its message is waiting in the queue

    producer(settings).control.purge()  # as when Redis restarts without its data
    assert export_id in redispatch_lost(settings)
    assert export_id in work_with_messages(settings.require("redis_url"))
    assert export_id not in redispatch_lost(settings)  # sent once
    assert http.get(f"/v1/models/{model_id}/exports/{export_id}").json()["status"] == "queued"


def test_an_export_asked_for_while_the_broker_is_down_is_queued_and_the_reaper_sends_it(
    settings: Settings, org_key: str, client: openai.OpenAI
) -> None:
    _, model_id, _ = finished_job_with_model(settings, client)
    broker_down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})  # nothing listens on port 1
    with TestClient(create_app(broker_down)) as api:
        created = api.post(f"/v1/models/{model_id}/exports", headers={"Authorization": f"Bearer {org_key}"})
    assert created.status_code == 200 and created.json()["status"] == "queued"
    export_id = created.json()["id"]
    assert export_id not in work_with_messages(settings.require("redis_url"))  # stored, but never sent

    assert export_id in redispatch_lost(settings)
    assert export_id in work_with_messages(settings.require("redis_url"))


def test_reaper_requeues_an_export_lost_with_its_worker_and_fails_it_out_of_attempts(
    http: httpx.Client, settings: Settings, client: openai.OpenAI
) -> None:
    past_the_time_limit = timedelta(seconds=settings.job_time_limit_seconds, hours=1)
    model_id, export_id = _export(http, settings, client)
    live_model_id, live_id = _export(http, settings, client)
    producer(settings).control.purge()  # their messages were taken by the workers that claimed them
    _export_running(settings, export_id, attempt=1, started=past_the_time_limit)
    _export_running(settings, live_id, attempt=1, started=timedelta(minutes=1))

    assert reap_expired_leases(settings).count(export_id) == 1
    assert http.get(f"/v1/models/{model_id}/exports/{export_id}").json()["status"] == "queued"
    assert export_id in work_with_messages(settings.require("redis_url"))
    assert http.get(f"/v1/models/{live_model_id}/exports/{live_id}").json()["status"] == "running"

    _export_running(settings, export_id, attempt=settings.max_job_attempts, started=past_the_time_limit)
    assert export_id not in reap_expired_leases(settings)
    failed = http.get(f"/v1/models/{model_id}/exports/{export_id}").json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "worker_lost"
    assert f"no attempts left ({settings.max_job_attempts} made)" in failed["error"]["message"]


def test_a_lost_qlora_job_is_sent_again_to_the_cuda_workers_queue(client: openai.OpenAI, settings: Settings) -> None:
    """Only CUDA workers consume `training.cuda`: a CPU worker woken by the job's message could not run it."""
    forget_other_jobs(settings)
    job_id = _job_in_state(client, settings, "queued", timedelta(0), attempt=0)
    with transaction(settings.require("database_url")) as session:
        session.get_one(FineTuningJob, job_id).needs_cuda = True
    producer(settings).control.purge()  # the message the API sent when the job did not need CUDA yet
    broker = redis.Redis.from_url(settings.require("redis_url"))

    assert job_id in redispatch_lost(settings)
    assert broker.llen(CUDA_TRAINING_QUEUE) == 1 and broker.llen(TRAINING_QUEUE) == 0
    assert job_id not in redispatch_lost(settings)  # its message waits in the CUDA queue
    client.fine_tuning.jobs.cancel(job_id)
