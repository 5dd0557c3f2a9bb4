"""A distillation job on the real default model, teacher and student alike (small numbers): the teacher answers the
prompts, its answers become a training file the organisation can read, and the student trains on them."""

import json

import openai

from app.core.db import transaction
from app.core.settings import Settings
from app.core.tables import FineTuningJob
from app.ml.base_models.from_settings import registry_from_settings
from tests.helpers.datasets import TICKETS
from worker.job_runner import run_job


def test_the_teacher_answers_every_prompt_and_the_student_trains_on_the_answers(
    client: openai.OpenAI, settings: Settings
) -> None:
    prompts = [f"Ticket: {question}" for question, _ in TICKETS]
    content = "".join(json.dumps({"prompt": prompt}) + "\n" for prompt in prompts).encode()
    prompts_file = client.files.create(file=("prompts.jsonl", content), purpose="fine-tune")
    assert client.files.retrieve(prompts_file.id).status == "processed"
    job = client.fine_tuning.jobs.create(
        model=settings.default_base_model,
        training_file=prompts_file.id,
        seed=4,
        method={  # type: ignore[arg-type, typeddict-item]
            "type": "distillation",
            "distillation": {
                "teacher_model": settings.default_base_model,
                "max_tokens": 16,
                "hyperparameters": {"n_epochs": 1, "batch_size": 4},
            },
        },
    )
    assert job.method is not None and job.method.type == "distillation"

    run_job(settings, registry_from_settings(settings), job.id)

    finished = client.fine_tuning.jobs.retrieve(job.id)
    assert finished.status == "succeeded", finished.error
    distillation = finished.method.model_extra["distillation"]  # type: ignore[union-attr]
    assert distillation["teacher_model"] == settings.default_base_model and distillation["temperature"] == 0.0
    generated = client.files.retrieve(distillation["generated_file"])
    assert generated.purpose == "fine-tune" and generated.filename == f"distilled-{job.id}.jsonl"
    examples = [json.loads(line) for line in client.files.content(generated.id).text.splitlines()]
    assert [e["messages"][0]["content"] for e in examples] == prompts  # one answer per prompt, in order
    assert all(e["messages"][1]["role"] == "assistant" and e["messages"][1]["content"] for e in examples)

    events = [e.message for e in reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=100)))]
    asked = events.index(f"Generating the teacher's answers ({settings.default_base_model}) to 12 prompts")
    written = events.index(f"The teacher's answers are in {generated.id} (12 examples)")
    first_step = next(i for i, message in enumerate(events) if message.startswith("Step 1/"))
    assert asked < written < first_step  # both phases, in order
    report = client.get(f"/fine_tuning/jobs/{job.id}/evaluation", cast_to=object)
    answers = {e["messages"][0]["content"]: e["messages"][1]["content"] for e in examples}
    for worst in report["worst_examples"]:  # type: ignore[index]
        assert worst["target"] == answers[worst["prompt"][-1]["content"]]  # held out: scored against the teacher
    assert report["held_out_examples"] == 2  # type: ignore[index]  # 10 % of 12, at least 2

    # A later attempt of a job (its worker lost after the teacher answered) reads the answers back, asks no teacher.
    again = client.fine_tuning.jobs.create(
        model=settings.default_base_model,
        training_file=prompts_file.id,
        method={  # type: ignore[arg-type, typeddict-item]
            "type": "distillation",
            "distillation": {"teacher_model": settings.default_base_model, "hyperparameters": {"n_epochs": 1}},
        },
    )
    with transaction(settings.require("database_url")) as session:
        row = session.get_one(FineTuningJob, again.id)
        row.method = {**row.method, "distillation": {**row.method["distillation"], "generated_file": generated.id}}
    run_job(settings, registry_from_settings(settings), again.id)
    assert client.fine_tuning.jobs.retrieve(again.id).status == "succeeded"
    messages = [e.message for e in client.fine_tuning.jobs.list_events(again.id, limit=100)]
    assert not any(message.startswith("Generating the teacher's answers") for message in messages)
