"""The whole product through the openai SDK: upload → fine-tune the real default model → chat with it."""

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import date

import openai
import pytest
from openai.types.fine_tuning import FineTuningJobEvent

from app.core import usage
from app.core.db import transaction
from app.core.settings import Settings
from app.core.storage import store_for
from app.ml.base_models.registry import LLAMA_STYLE_PROJECTIONS
from app.serving.engine import adapter_directory_name
from tests.helpers.datasets import HELD_OUT, TICKETS, chat_jsonl
from tests.helpers.jobs import NO_EVALUATION, start_long_tiny_job, wait_for_job
from tests.helpers.tiny_models import TINY_MODEL_ID
from tests.helpers.waiting import eventually
from tests.helpers.workers import forget_other_jobs, start_training_worker, stop


@pytest.fixture(scope="module")
def worker(settings: Settings) -> Iterator[subprocess.Popen]:
    """A real Celery training worker consuming from Redis, for this module only."""
    forget_other_jobs(settings)
    process = start_training_worker(settings)
    yield process
    stop(process)


def test_fine_tune_the_default_model_and_chat_with_it(
    client: openai.OpenAI, worker: subprocess.Popen, settings: Settings
) -> None:
    training = client.files.create(file=("tickets.jsonl", chat_jsonl(TICKETS)), purpose="fine-tune")
    # one held-out example is also in the training file: the job must say so
    held_out = client.files.create(file=("held-out.jsonl", chat_jsonl(HELD_OUT + TICKETS[2:3])), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=settings.default_base_model,
        training_file=training.id,
        validation_file=held_out.id,
        suffix="tickets",
        seed=3,
        hyperparameters={"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 2},
    )
    finished = wait_for_job(client, job.id)
    assert finished.status == "succeeded", finished.error
    assert finished.error is None and finished.trained_tokens and finished.trained_tokens > 0
    with transaction(settings.require("database_url")) as session:
        billed = usage.days(session, finished.organization_id, usage.FINE_TUNING, date.min, date.max, None)
    assert [(day.model, day.trained_tokens, day.requests) for day in billed] == [
        (settings.default_base_model, finished.trained_tokens, 1)
    ]  # the organisation's usage counts what the job says it trained, refit included
    model_id = finished.fine_tuned_model
    assert model_id and model_id.startswith(f"ft:{settings.default_base_model}:") and ":tickets:" in model_id
    # The worker announced the new model, and the API fetched it before anyone asked for it.
    warm = settings.adapter_cache_dir / adapter_directory_name(f"orgs/{finished.organization_id}/adapters/{job.id}")
    eventually(
        (warm / "adapter_model.safetensors").exists,
        timeout=30,
        what="the new adapter fetched ahead of its first request",
    )

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = [event for event in events if event.type == "metrics"]
    steps = [event.data["step"] for event in reversed(metrics)]
    # 12 examples, batch 4, 1 epoch: 3 steps choose the epochs, then the refit trains on the held-out ones too
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 3
    assert all(event.data["train_loss"] > 0 for event in metrics)
    selection_end = next(event for event in metrics if event.data["step"] == 3)
    assert selection_end.data["valid_loss"] > 0  # the held-out loss after the (only) epoch
    assert any(event.message.startswith("Publishing: epoch 1 had the lowest") for event in events)
    assert events[0].message == "The job has successfully completed"
    started = next(event for event in events if event.message == "Fine-tuning job started")
    assert started.data["hyperparameters"]["batch_size"] == 4 and started.data["lora"]["r"] == 16
    assert started.data["learning_rate"] == pytest.approx(2 * 2e-3 * (4 / 8) ** 0.5)  # multiplier 2, batch 4
    sizes = next(event for event in events if event.message.startswith("Training on "))
    assert sizes.data == {"training_examples": len(TICKETS), "validation_examples": len(HELD_OUT) + 1}  # + the leak
    leaks = [event for event in events if event.data and event.data.get("code") == "validation_leakage"]
    assert len(leaks) == 1 and leaks[0].level == "warn"
    assert leaks[0].data["groups"] == [{"validation_lines": [len(HELD_OUT) + 1], "training_lines": [3]}]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [3]
    assert checkpoints[0].metrics.valid_loss == selection_end.data["valid_loss"]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{finished.fine_tuned_model}:ckpt-step-3"
    from_checkpoint = client.chat.completions.create(
        model=checkpoints[0].fine_tuned_model_checkpoint,
        messages=[{"role": "user", "content": "Ticket: I was charged twice."}],
        max_tokens=8,
    )
    assert (
        from_checkpoint.choices[0].message.content
        and from_checkpoint.model == checkpoints[0].fine_tuned_model_checkpoint
    )

    # the results file: one CSV row per step, the held-out columns filled at the epoch's end
    csv_file, evaluation_file = finished.result_files
    csv_rows = client.files.content(csv_file).text.splitlines()
    assert csv_rows[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert [row.split(",")[0] for row in csv_rows[1:]] == [str(step) for step in steps]
    assert float(csv_rows[3].split(",")[3]) == selection_end.data["valid_loss"]
    assert client.files.retrieve(csv_file).purpose == "fine-tune-results"
    # the evaluation report: it counts the held-out example that is also in the training file
    report = json.loads(client.files.content(evaluation_file).text)
    assert report["held_out_examples"] == len(HELD_OUT) + 1
    leak = next(w for w in report["warnings"] if w["code"] == "validation_leakage")
    assert leak["message"].startswith("1 held-out example(s) also appear in the training file")

    assert model_id in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Ticket: I was charged twice."}], max_tokens=24
    )
    assert reply.choices[0].message.content
    assert reply.model == model_id
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 24

    base = client.chat.completions.create(
        model=settings.default_base_model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8
    )
    assert base.choices[0].message.content

    adapter_objects = list(store_for(settings).list_keys(f"orgs/{finished.organization_id}/adapters/{job.id}"))
    assert any(key.endswith("adapter_model.safetensors") for key in adapter_objects)
    client.models.delete(model_id)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}])
    assert list(store_for(settings).list_keys(f"orgs/{finished.organization_id}/adapters/{job.id}")) == []


def test_cancelling_a_running_job_stops_it_and_publishes_nothing(
    client: openai.OpenAI, worker: subprocess.Popen, settings: Settings
) -> None:
    job_id = start_long_tiny_job(client, n_epochs=20)  # half a minute of training, if nothing stopped it
    eventually(lambda: _metrics(client, job_id), timeout=300, what="a first training step")
    held_out = [e for e in client.fine_tuning.jobs.list_events(job_id) if e.message.startswith("No validation")]
    assert held_out[0].message.startswith("No validation file: holding out 12 of 120 training examples")
    assert len(held_out[0].data["held_out_examples"]) == 12
    running = client.fine_tuning.jobs.retrieve(job_id)
    assert running.status == "running"
    assert running.estimated_finish is not None and running.estimated_finish > time.time()  # kept current
    client.fine_tuning.jobs.cancel(job_id)
    final = client.fine_tuning.jobs.retrieve(job_id)
    assert final.status == "cancelled" and final.fine_tuned_model is None

    # The solo worker takes the next job only once it has let go of the cancelled one: from then on, not one more
    # step of it may appear.
    next_job = start_long_tiny_job(client, n_epochs=1)
    eventually(lambda: client.fine_tuning.jobs.retrieve(next_job).status != "queued", what="the next job to start")
    steps_then = len(_metrics(client, job_id))
    assert steps_then < 20 * 54  # it stopped short of the end
    assert wait_for_job(client, next_job).status == "succeeded"
    assert len(_metrics(client, job_id)) == steps_then  # no training after the cancel
    assert list(store_for(settings).list_keys(f"orgs/{final.organization_id}/adapters/{job_id}")) == []


def _metrics(client: openai.OpenAI, job_id: str) -> list[FineTuningJobEvent]:
    return [event for event in client.fine_tuning.jobs.list_events(job_id, limit=100) if event.type == "metrics"]


def test_a_fine_tuned_model_can_be_trained_further(
    client: openai.OpenAI, worker: subprocess.Popen, settings: Settings
) -> None:
    training = client.files.create(file=("tickets.jsonl", chat_jsonl(TICKETS)), purpose="fine-tune")
    parent_job = client.fine_tuning.jobs.create(
        model=TINY_MODEL_ID,
        training_file=training.id,
        hyperparameters={"n_epochs": 5, "batch_size": 2, "learning_rate_multiplier": 2},
        suffix="parent",
        # the tiny model names no default targets; the parent names them, as a model's registry entry would
        extra_body=NO_EVALUATION | {"lora": {"target_modules": list(LLAMA_STYLE_PROJECTIONS)}},
    )
    parent = wait_for_job(client, parent_job.id)
    assert parent.status == "succeeded", parent.error
    parent_model = parent.fine_tuned_model or ""

    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(model=parent_model, training_file=training.id, extra_body={"lora": {"r": 4}})
    assert "lora.r cannot change when training a fine-tuned model further" in error.value.message
    child_job = client.fine_tuning.jobs.create(
        model=parent_model,
        training_file=training.id,
        hyperparameters={"n_epochs": 1, "batch_size": 2},
        extra_body=NO_EVALUATION,
    )
    assert child_job.model == parent_model
    parent_lora, child_lora = parent_job.lora, child_job.lora  # type: ignore[attr-defined]
    assert child_lora | {"target_modules": sorted(parent_lora["target_modules"])} == child_lora  # same adapter
    assert {k: v for k, v in child_lora.items() if k != "target_modules"} == {
        k: v for k, v in parent_lora.items() if k != "target_modules"
    }
    child = wait_for_job(client, child_job.id)
    assert child.status == "succeeded", child.error
    assert (child.fine_tuned_model or "").startswith(f"ft:{TINY_MODEL_ID}:")

    def first_loss(job_id: str) -> float:
        metrics = [e for e in client.fine_tuning.jobs.list_events(job_id, limit=100) if e.type == "metrics"]
        return next(e.data["train_loss"] for e in metrics if e.data["step"] == 1)

    # It started from what the parent learned, not from the base model.
    assert first_loss(child.id) < 0.5 * first_loss(parent.id)
    # A checkpoint whose stored weights were damaged is refused with a clear error, not served.
    first_checkpoint = client.fine_tuning.jobs.checkpoints.list(parent.id).data[-1]
    store = store_for(settings)
    key = next(
        k
        for k in store.list_keys(
            f"orgs/{parent.organization_id}/checkpoints/{parent.id}/step-{first_checkpoint.step_number}/"
        )
        if k.endswith("adapter_model.safetensors")
    )
    store.put_bytes(key, store.read_bytes(key)[:-10])
    with pytest.raises(openai.InternalServerError) as damaged:
        client.with_options(max_retries=0).chat.completions.create(
            model=first_checkpoint.fine_tuned_model_checkpoint, messages=[{"role": "user", "content": "hi"}]
        )
    assert damaged.value.code == "adapter_corrupted" and "failed its checksum" in damaged.value.message

    client.models.delete(parent_model)  # the child's adapter is its own
    reply = client.chat.completions.create(
        model=child.fine_tuned_model or "",
        messages=[{"role": "user", "content": f"Ticket: {TICKETS[1][0]}"}],
        max_tokens=8,
    )
    assert reply.choices[0].message.content
