"""A DPO job on the real default model: the base model finds a fluent brush-off likelier than a structured ticket
answer; after a few steps of preference training on such pairs, the fine-tuned model prefers the structured answer
on held-out tickets, and the job's events and report say so."""

import json
import math

import openai
import pytest

from app.core.settings import Settings
from app.ml.base_models.from_settings import registry_from_settings
from bench.tickets import ticket_split
from worker.job_runner import run_job

BRUSH_OFF = "I'm sorry to hear that! Please contact our support team and they will help you as soon as possible."


def _pairs(rows: list[tuple[str, str]]) -> bytes:
    lines = [
        json.dumps(
            {
                "input": {"messages": [{"role": "user", "content": f"Ticket: {ticket}"}]},
                "preferred_output": [{"role": "assistant", "content": answer}],
                "non_preferred_output": [{"role": "assistant", "content": BRUSH_OFF}],
            }
        )  # fmt: skip
        for ticket, answer in rows
    ]
    return ("\n".join(lines) + "\n").encode()


def test_preference_training_makes_the_model_prefer_the_chosen_answers(
    client: openai.OpenAI, settings: Settings
) -> None:
    train, test = ticket_split(seed=2)
    training = client.files.create(file=("train.jsonl", _pairs(train[:24])), purpose="fine-tune")
    held_out = client.files.create(file=("held-out.jsonl", _pairs(test[:12])), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=settings.default_base_model,
        training_file=training.id,
        validation_file=held_out.id,
        seed=2,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    )
    run_job(settings, registry_from_settings(settings), job.id)

    finished = client.fine_tuning.jobs.retrieve(job.id)
    assert finished.status == "succeeded", finished.error
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = [e.data for e in reversed(events) if e.type == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, len(metrics) + 1))
    selection = metrics[:12]  # 24 pairs, 4 a step, 2 epochs; then the refit on the held-out pairs too
    assert selection[-1]["valid_loss"] is not None and all("valid_loss" not in m for m in metrics[12:])
    # The policy starts as its reference, whose logps come from the same forward on the same batch: rewards start at
    # exactly zero, on fp32 and bf16 workers alike.
    assert metrics[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics[0]["train_reward_margin"] == pytest.approx(0, abs=1e-6) and selection[-1]["train_reward_margin"] > 0
    assert selection[-1]["valid_reward_accuracy"] == 1.0 and selection[-1]["valid_loss"] < math.log(2)

    checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]  # the last epoch's
    assert checkpoint.metrics.model_extra["valid_reward_accuracy"] == selection[-1]["valid_reward_accuracy"]  # type: ignore[index]

    report = client.get(f"/fine_tuning/jobs/{job.id}/evaluation", cast_to=object)
    assert report["method"] == "dpo" and report["held_out_pairs"] == 12  # type: ignore[index]
    base, tuned = report["base_model"], report["fine_tuned_model"]  # type: ignore[index]
    assert base["preference_accuracy"] <= 0.25 and tuned["preference_accuracy"] >= 0.9
    assert tuned["mean_margin"] > base["mean_margin"]
    assert report["verdict"].startswith(  # type: ignore[index]
        f"fine-tuned prefers the chosen answer in {100 * tuned['preference_accuracy']:.0f} % of held-out pairs"
    )
