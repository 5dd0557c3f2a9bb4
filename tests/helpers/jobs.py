"""Fine-tuning jobs as the service tiers use them: created through the SDK, waited on as a client would."""

import openai
from openai.types.fine_tuning import FineTuningJob

from app.core.db import transaction
from app.core.settings import Settings
from app.core.storage import store_for
from app.core.tables import FineTunedModel
from app.core.tables import FineTuningJob as FineTuningJobRow
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.tiny_models import TINY_MODEL_ID
from tests.helpers.waiting import eventually

ENDED = ("succeeded", "failed", "cancelled")
NO_EVALUATION = {"evaluation": {"max_examples": 0}}  # for tests that do not read the end-of-job report


def wait_for_job(client: openai.OpenAI, job_id: str, timeout_s: float = 600) -> FineTuningJob:
    """The job once it has ended."""
    return eventually(
        lambda: (job := client.fine_tuning.jobs.retrieve(job_id)).status in ENDED and job,
        timeout=timeout_s,
        interval=0.5,
        what=f"job {job_id} to end",
    )


def wait_for_event(client: openai.OpenAI, job_id: str, prefix: str, timeout_s: float = 300) -> str:
    """The first event message of the job that starts with `prefix`, once there is one."""
    return eventually(
        lambda: next((m for m in event_messages(client, job_id) if m.startswith(prefix)), None),
        timeout=timeout_s,
        what=f"an event {prefix!r} of {job_id}",
    )


def event_messages(client: openai.OpenAI, job_id: str) -> list[str]:
    """The job's event messages, oldest first."""
    return [event.message for event in reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100)))]


def start_long_tiny_job(client: openai.OpenAI, n_epochs: int, **create: object) -> str:
    """A job on the tiny model that trains long enough for a fault to hit it mid-way (120 examples, 12 held out:
    54 steps of about 25 ms per epoch, a checkpoint at each epoch's end), with no end-of-job evaluation."""
    training = client.files.create(file=("tickets.jsonl", chat_jsonl(TICKETS * 10)), purpose="fine-tune")
    return client.fine_tuning.jobs.create(
        model=TINY_MODEL_ID,
        training_file=training.id,
        hyperparameters={"n_epochs": n_epochs, "batch_size": 2},
        extra_body=NO_EVALUATION,
        **create,  # type: ignore[arg-type]
    ).id


def first_checkpoint_step(client: openai.OpenAI, job_id: str) -> int:
    """The step of the job's first checkpoint, once saved: the steps in one epoch."""
    message = wait_for_event(client, job_id, "Checkpoint saved at step ")
    return int(message.removeprefix("Checkpoint saved at step ").split()[0])


def finished_job_with_model(
    settings: Settings, client: openai.OpenAI, base_model: str = TINY_MODEL_ID
) -> tuple[str, str, str]:
    """(job id, model id, adapter prefix) of a job of the client's organisation that succeeded with a fine-tuned
    model. The rows are written directly, as the worker that finished it would, and the adapter prefix holds one
    object (what the end-of-run consistency sweep looks for): tests of the rows need no training run."""
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model=base_model, training_file=file_id)
    model_id = f"ft:{base_model}:owner::{job.id}"
    with transaction(settings.require("database_url")) as session:
        row = session.get_one(FineTuningJobRow, job.id)
        row.status, row.fine_tuned_model = "succeeded", model_id
        prefix = f"orgs/{row.organization_id}/adapters/{job.id}"
        session.add(
            FineTunedModel(
                id=model_id,
                organization_id=row.organization_id,
                job_id=job.id,
                base_model=base_model,
                adapter_prefix=prefix,
            )
        )
    store_for(settings).put_bytes(f"{prefix}/adapter_config.json", b"{}")
    return job.id, model_id, prefix
