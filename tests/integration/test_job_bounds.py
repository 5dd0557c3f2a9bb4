"""What bounds a job's hold on a worker and on the database: a cancel is heard while the examples are tokenized,
a job past the deployment's time limit fails saying so, and a long job's metrics events stay within their bound."""

import time
from typing import Any

import openai
import pytest
from sqlalchemy import select

from app.core.db import transaction
from app.core.queue import producer
from app.core.settings import Settings
from app.core.storage import adapter_prefix, store_for
from app.core.tables import JobEvent
from app.ml.base_models.from_settings import registry_from_settings
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.jobs import NO_EVALUATION
from tests.helpers.tiny_models import TINY_MODEL_ID
from worker.job_runner import run_job
from worker.training import trainer

EXAMPLES = 12 * len(TICKETS)


def _job(client: openai.OpenAI, settings: Settings, n_epochs: int = 1) -> str:
    training = client.files.create(file=("tickets.jsonl", chat_jsonl(TICKETS * 12)), purpose="fine-tune")
    job_id = client.fine_tuning.jobs.create(
        model=TINY_MODEL_ID,
        training_file=training.id,
        hyperparameters={"n_epochs": n_epochs, "batch_size": 2},
        extra_body=NO_EVALUATION,
    ).id
    producer(settings).control.purge()  # its message was taken, as by the worker that runs it
    return job_id


def _metrics(settings: Settings, job_id: str) -> list[dict]:
    with transaction(settings.require("database_url")) as session:
        query = select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
        return list(session.scalars(query.order_by(JobEvent.seq)))


def test_a_job_cancelled_while_its_examples_are_tokenized_stops_before_training(
    client: openai.OpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _job(client, settings)
    tokenized = []

    def slow_tokenize(*args: Any, **kwargs: Any) -> Any:
        """The fifth example is a long one: the user cancels meanwhile."""
        tokenized.append(True)
        if len(tokenized) == 5:
            client.fine_tuning.jobs.cancel(job_id)
            time.sleep(2.5)  # past the 2 s between the worker's looks at the job's status
        return tokenize_example(*args, **kwargs)

    tokenize_example = trainer.tokenize_example
    monkeypatch.setattr(trainer, "tokenize_example", slow_tokenize)
    run_job(settings, registry_from_settings(settings), job_id)

    assert client.fine_tuning.jobs.retrieve(job_id).status == "cancelled"
    assert len(tokenized) < EXAMPLES  # it stopped within the file, not after it
    assert _metrics(settings, job_id) == []  # no step was trained
    organization_id = client.fine_tuning.jobs.retrieve(job_id).organization_id
    assert list(store_for(settings).list_keys(adapter_prefix(organization_id, job_id) + "/")) == []


def test_a_job_past_the_deployment_s_time_limit_fails_saying_so(client: openai.OpenAI, settings: Settings) -> None:
    job_id = _job(client, settings)
    limited = settings.model_copy(update={"job_time_limit_seconds": 0.001})

    run_job(limited, registry_from_settings(limited), job_id)

    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "time_limit_exceeded"
    assert "ran past the deployment's limit of" in job.error.message


def test_a_long_job_keeps_its_metrics_events_within_the_bound_and_the_last_step(
    client: openai.OpenAI, settings: Settings
) -> None:
    job_id = _job(client, settings, n_epochs=2)
    bounded = settings.model_copy(update={"max_metrics_events": 10})

    run_job(bounded, registry_from_settings(bounded), job_id)

    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "succeeded", job.error
    metrics = _metrics(settings, job_id)
    steps, last = [data["step"] for data in metrics], metrics[-1]["total_steps"]
    assert last > 20 and len(steps) <= 10
    assert steps[0] == 1 and steps[-1] == last and steps == sorted(steps)  # the curve from its start to its end
    results = client.files.content(job.result_files[0]).text.splitlines()
    assert results[-1].startswith(f"{last},")  # the results file ends with the last step
