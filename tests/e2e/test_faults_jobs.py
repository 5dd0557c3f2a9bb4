"""Faults in the services a running job stands on, injected into servers of the test's own while a real training
worker trains and a real maintenance worker runs the reaper on a 2 s beat:

- object storage down for a moment: the job goes back to the queue and resumes from its last checkpoint;
- object storage down for good: the job fails naming it, and its training states go once storage is back;
- PostgreSQL restarted: the job still ends, trained into one model.
"""

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import openai
from sqlalchemy import delete, func, select

from app.api.main import create_app
from app.cli.embedded.postgres import EmbeddedPostgres
from app.cli.embedded.seaweed import SeaweedS3
from app.core.bootstrap import prepare
from app.core.db import transaction
from app.core.settings import Settings
from app.core.storage import store_for, training_states_prefix
from app.core.tables import FineTunedModel, Organization
from app.ml.adapter_manifest import verified_fetch
from tests.helpers.jobs import event_messages, first_checkpoint_step, start_long_tiny_job, wait_for_event, wait_for_job
from tests.helpers.models import add_tiny_model
from tests.helpers.own_services import OwnRedis
from tests.helpers.services import new_org_key, sdk_client, serving
from tests.helpers.workers import forget_other_jobs, start_maintenance_worker, start_training_worker, stop
from worker.storage_sweep import leftovers_of_ended_jobs

TIMEOUT_S = 300
FAST_RECOVERY = {"LORAPORT_JOB_LEASE_SECONDS": "6", "LORAPORT_RECONCILE_INTERVAL_SECONDS": "2"}


@contextmanager
def _service(
    settings: Settings, tiny_model_dir: Path, schedule: Path, **worker_environment: str
) -> Iterator[openai.OpenAI]:
    """An API, a training worker and a maintenance worker on `settings`, and an SDK client of a new organisation
    that retries 503s (the API's answer while a service is down). The organisation goes afterwards, so the
    suite's database keeps no row pointing into a server that is gone."""
    prepare(settings)
    add_tiny_model(settings, tiny_model_dir)  # on a test's own PostgreSQL or S3, which start empty
    forget_other_jobs(settings)  # the fair queue would take other modules' older queued jobs first
    environment = FAST_RECOVERY | worker_environment
    worker = start_training_worker(settings, **environment)
    maintenance = start_maintenance_worker(settings, schedule, **environment)
    name = f"job-faults-{uuid.uuid4().hex[:8]}"
    try:
        with serving(create_app(settings)) as url:
            yield sdk_client(url, new_org_key(settings, name)).with_options(max_retries=10)
    finally:
        stop(maintenance)
        stop(worker)
        with transaction(settings.require("database_url")) as session:
            session.execute(delete(Organization).where(Organization.name == name))


# The tiny model, trained long enough (about 1.5 s an epoch) for the fault to come while it trains.
EPOCHS = 12


def _wait_until_ended(client: openai.OpenAI, job_id: str) -> str:
    return wait_for_job(client, job_id, TIMEOUT_S).status


def _model_rows(settings: Settings, job_id: str) -> int:
    with transaction(settings.require("database_url")) as session:
        return session.scalar(select(func.count()).select_from(FineTunedModel).where(FineTunedModel.job_id == job_id))


def _own_storage(settings: Settings, s3: SeaweedS3, redis: OwnRedis) -> Settings:
    return settings.model_copy(
        update={"s3_endpoint_url": s3.url, "s3_bucket": f"faults-{uuid.uuid4().hex[:8]}", "redis_url": redis.url}
    )


def _assert_no_endpoint(settings: Settings, messages: list[str]) -> None:
    """What tenants read names the service, never where it runs (botocore's text names the endpoint URL)."""
    endpoint = urlsplit(settings.s3_endpoint_url or "")
    for message in messages:
        assert "://" not in message and endpoint.netloc not in message, message
        assert f":{endpoint.port}" not in message, message


def test_storage_down_for_a_moment_sends_the_job_back_to_resume_from_its_checkpoint(
    settings: Settings, own_s3: SeaweedS3, own_redis: OwnRedis, tmp_path: Path, tiny_model_dir: Path
) -> None:
    own = _own_storage(settings, own_s3, own_redis)
    # Long enough for the S3 server to be back before the next attempt.
    with _service(own, tiny_model_dir, tmp_path / "beat", LORAPORT_OUTAGE_RETRY_SECONDS="15") as client:
        job_id = start_long_tiny_job(client, EPOCHS)
        first_checkpoint_step(client, job_id)
        own_s3.stop()
        gave_back = wait_for_event(client, job_id, "Object storage became unavailable")
        own_s3.start()
        status = _wait_until_ended(client, job_id)
        messages = event_messages(client, job_id)
        job = client.fine_tuning.jobs.retrieve(job_id)
        assert status == "succeeded", job.error
        assert "resumes from its last checkpoint in 15 s (attempt 2 of 3)" in gave_back
        _assert_no_endpoint(own, [gave_back])
        assert "Sent to a worker again after the outage" in messages
        assert any(message.startswith("Resumed from step") for message in messages)
        assert messages.count("The job has successfully completed") == 1 and _model_rows(own, job_id) == 1
        with transaction(own.require("database_url")) as session:
            prefix = session.scalar(select(FineTunedModel.adapter_prefix).where(FineTunedModel.job_id == job_id))
        verified_fetch(store_for(own).download_prefix)(prefix, tmp_path / "adapter")  # whole, checksums match
        assert not list(store_for(own).list_keys(training_states_prefix(job.organization_id, job_id) + "/"))


def test_storage_down_for_good_fails_the_job_naming_it_and_its_leftovers_go_once_it_is_back(
    settings: Settings, own_s3: SeaweedS3, own_redis: OwnRedis, tmp_path: Path, tiny_model_dir: Path
) -> None:
    own = _own_storage(settings, own_s3, own_redis)
    environment = {"LORAPORT_OUTAGE_RETRY_SECONDS": "1", "LORAPORT_MAX_JOB_ATTEMPTS": "2"}
    with _service(own, tiny_model_dir, tmp_path / "beat", **environment) as client:
        job_id = start_long_tiny_job(client, EPOCHS)
        first_checkpoint_step(client, job_id)
        own_s3.stop()
        status = _wait_until_ended(client, job_id)
        job = client.fine_tuning.jobs.retrieve(job_id)
        assert status == "failed" and job.error is not None
        assert job.error.code == "service_unavailable"
        assert job.error.message.startswith("Training stopped 2 times because object storage was unavailable")
        assert "check that the workers can reach it" in job.error.message
        _assert_no_endpoint(own, [job.error.message, *event_messages(client, job_id)])

        own_s3.start()
        store = store_for(own)
        states = training_states_prefix(job.organization_id, job_id)
        assert list(store.list_keys(states + "/")), "the fault came after the first checkpoint: its states were kept"
        with transaction(own.require("database_url")) as session:
            assert states in leftovers_of_ended_jobs(session, store)
        assert not list(store.list_keys(states + "/"))


def test_a_postgres_restart_while_a_job_trains_still_ends_it_in_one_model(
    settings: Settings, own_postgres: EmbeddedPostgres, own_redis: OwnRedis, tmp_path: Path, tiny_model_dir: Path
) -> None:
    own = settings.model_copy(update={"database_url": own_postgres.url, "redis_url": own_redis.url})
    with _service(own, tiny_model_dir, tmp_path / "beat") as client:
        job_id = start_long_tiny_job(client, EPOCHS)
        wait_for_event(client, job_id, "Step 2/")
        own_postgres.stop()
        time.sleep(2)  # the outage: the worker's next metrics write fails, and its lease cannot be renewed
        own_postgres.start()
        status = _wait_until_ended(client, job_id)
        messages = event_messages(client, job_id)
        job = client.fine_tuning.jobs.retrieve(job_id)
        assert status == "succeeded", job.error
        assert any(message.startswith("Worker lost; restarting the job (attempt 2)") for message in messages)
        assert messages.count("The job has successfully completed") == 1 and _model_rows(own, job_id) == 1
