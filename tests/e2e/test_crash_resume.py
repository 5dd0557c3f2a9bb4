"""A worker killed mid-training loses nothing: the reaper re-queues the job when its lease lapses, another
worker resumes it from the last epoch's checkpoint, and the job succeeds. One killed while it uploads the adapter
publishes nothing half-written: the model appears only once another attempt has stored the adapter whole."""

import subprocess
from urllib.parse import urlsplit

import openai
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from sqlalchemy import select

from app.core.db import transaction
from app.core.settings import Settings
from app.core.storage import adapter_prefix, store_for, training_states_prefix
from app.core.tables import FineTunedModel
from app.ml.adapter_manifest import MANIFEST
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.jobs import NO_EVALUATION, first_checkpoint_step, start_long_tiny_job, wait_for_job
from tests.helpers.slow_link import SlowLink
from tests.helpers.tiny_models import TINY_MODEL_ID
from tests.helpers.waiting import eventually
from tests.helpers.workers import (  # noqa: F401  (a fixture)
    FAST_LEASE,
    forget_other_jobs,
    start_maintenance_worker,
    start_training_worker,
    stop,
)

EPOCHS = 6  # of the tiny model: about 1.5 s each, so the kill comes while it trains


def _finished_by_another_worker(client: openai.OpenAI, settings: Settings, job_id: str) -> FineTuningJob:
    worker = start_training_worker(settings, **FAST_LEASE)
    try:
        return wait_for_job(client, job_id, timeout_s=300)
    finally:
        stop(worker)


def test_a_killed_worker_s_job_resumes_from_its_last_checkpoint(
    client: openai.OpenAI, settings: Settings, maintenance: subprocess.Popen
) -> None:
    job_id = start_long_tiny_job(client, EPOCHS)
    first = start_training_worker(settings, **FAST_LEASE)
    try:
        per_epoch = first_checkpoint_step(client, job_id)
    finally:
        first.kill()  # SIGKILL: no cleanup, the message stays unacknowledged, the lease stops being renewed
        first.wait()
    finished = _finished_by_another_worker(client, settings, job_id)

    assert finished.status == "succeeded", finished.error
    events = _all_events(client, job_id)  # oldest first
    messages = [event.message for event in events]
    assert any(message.startswith("Worker lost; restarting the job (attempt 2)") for message in messages)
    resumed_at = next(i for i, event in enumerate(events) if event.message.startswith("Resumed from step"))
    resumed_step = events[resumed_at].data["resumed_from_step"]
    total = EPOCHS * per_epoch
    assert resumed_step in range(per_epoch, total, per_epoch)  # an epoch's end, not step 0
    steps_after = [event.data["step"] for event in events[resumed_at:] if event.type == "metrics"]
    # picked up where the checkpoint was, to the end of the selection run, then the refit's steps
    assert steps_after == list(range(resumed_step + 1, steps_after[-1] + 1)) and steps_after[-1] > total
    assert messages.count("The job has successfully completed") == 1  # exactly once, despite two workers
    with transaction(settings.require("database_url")) as session:
        models = select(FineTunedModel.id).where(FineTunedModel.job_id == job_id)
        assert session.scalars(models).all() == [finished.fine_tuned_model]  # one model row
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job_id, limit=100)
    assert sorted(c.step_number for c in checkpoints.data) == list(range(per_epoch, total + 1, per_epoch))
    states = list(store_for(settings).list_keys(training_states_prefix(finished.organization_id, job_id)))
    assert states == []  # optimizer states are only kept while the job may still resume

    reply = client.chat.completions.create(
        model=finished.fine_tuned_model or "", messages=[{"role": "user", "content": "Ticket: hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content


def _all_events(client: openai.OpenAI, job_id: str) -> list[FineTuningJobEvent]:
    """Every event of the job, oldest first (iterating a page fetches the next ones)."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))


def test_a_worker_killed_while_uploading_the_adapter_never_has_it_served_half_written(
    client: openai.OpenAI, settings: Settings, maintenance: subprocess.Popen
) -> None:
    training = client.files.create(file=("tickets.jsonl", chat_jsonl(TICKETS)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL_ID,
        training_file=training.id,
        hyperparameters={"n_epochs": 1, "batch_size": 2},
        extra_body=NO_EVALUATION,
    )
    store, adapter = store_for(settings), adapter_prefix(job.organization_id, job.id)
    # The worker reaches S3 through a link that crawls once a request names the adapter: the small files go
    # through, the weights take minutes, and the worker is killed between the two.
    s3_port = urlsplit(settings.s3_endpoint_url or "").port or 0
    with SlowLink(s3_port, slow_after=f"/{adapter}/".encode(), bytes_per_second=20_000) as link:
        first = start_training_worker(settings, LORAPORT_S3_ENDPOINT_URL=link.url, **FAST_LEASE)
        try:
            stored_before_kill = eventually(lambda: list(store.list_keys(adapter + "/")), timeout=300, interval=0.1)
        finally:
            first.kill()
            first.wait()

    assert not any(key.endswith(".safetensors") or key.endswith(MANIFEST) for key in stored_before_kill)
    assert client.fine_tuning.jobs.retrieve(job.id).status in ("running", "queued")
    assert not [model.id for model in client.models.list() if job.id.removeprefix("ftjob-") in model.id]

    finished = _finished_by_another_worker(client, settings, job.id)

    assert finished.status == "succeeded", finished.error
    with transaction(settings.require("database_url")) as session:
        models = select(FineTunedModel.adapter_prefix).where(FineTunedModel.job_id == job.id)
        assert session.scalars(models).all() == [adapter]  # one model, on the adapter uploaded whole the second time
    reply = client.chat.completions.create(
        model=finished.fine_tuned_model or "",
        messages=[{"role": "user", "content": f"Ticket: {TICKETS[0][0]}"}],
        max_tokens=4,
    )
    assert reply.choices[0].message.content
