"""The evaluation report of a job on the real default model: base and fine-tuned answers on held-out tickets, scored
side by side, in the job's API and in its results file; and the overfitting warning of a run that memorises."""

import json
import random
import uuid
from dataclasses import dataclass

import openai
import pytest

from app.core.settings import Settings
from app.ml.base_models.from_settings import registry_from_settings
from bench.tickets import ticket_split
from tests.helpers.datasets import HELD_OUT, TICKETS, chat_jsonl
from tests.helpers.services import new_org_key, sdk_client
from tests.helpers.tiny_models import TINY_MODEL_ID
from worker.evaluation_runner import run_evaluation
from worker.job_runner import run_job


def _evaluation(client: openai.OpenAI, job_id: str) -> dict:
    return client.get(f"/fine_tuning/jobs/{job_id}/evaluation", cast_to=object)  # type: ignore[return-value]


def _train(client: openai.OpenAI, settings: Settings, training: list, held_out: list, **options) -> str:
    """A job trained to the end by a worker in this process; its id."""
    training_file = client.files.create(file=("train.jsonl", chat_jsonl(training)), purpose="fine-tune")
    validation_file = client.files.create(file=("valid.jsonl", chat_jsonl(held_out)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=settings.default_base_model, training_file=training_file.id, validation_file=validation_file.id, **options
    )
    run_job(settings, registry_from_settings(settings), job.id)
    return job.id


@dataclass(frozen=True)
class TicketJob:
    """A job of one organisation that fine-tuned the default model on tickets, and tickets it never saw."""

    client: openai.OpenAI
    job_id: str
    held_out: list[tuple[str, str]]  # its validation file
    unseen: list[tuple[str, str]]  # in neither of its files


@pytest.fixture(scope="module")
def tickets(api_base_url: str, settings: Settings) -> TicketJob:
    client = sdk_client(api_base_url, new_org_key(settings, f"tickets-{uuid.uuid4().hex[:10]}"))
    train, test = ticket_split(seed=1)
    job_id = _train(
        client,
        settings,
        train[:48],
        test[:12],
        seed=5,
        hyperparameters={"n_epochs": 2, "batch_size": 8},
        extra_body={"evaluation": {"max_examples": 12}},
    )
    return TicketJob(client, job_id, test[:12], test[12:])


def test_the_report_shows_what_the_fine_tune_changed_on_held_out_tickets(
    tickets: TicketJob, other_client: openai.OpenAI
) -> None:
    client, job_id, held_out = tickets.client, tickets.job_id, tickets.held_out
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "succeeded", job.error
    evaluation = {"max_examples": 12, "max_tokens": 256, "checkpoints": True, "refit": "auto"}
    assert job.evaluation == evaluation  # type: ignore[attr-defined]

    report = _evaluation(client, job_id)
    assert report["object"] == "fine_tuning.job.evaluation" and report["fine_tuning_job_id"] == job_id
    assert report["held_out_examples"] == 12
    base, tuned = report["base_model"], report["fine_tuned_model"]
    # The base model answers in prose; the fine-tuned one learned the ticket format and most of the rule.
    assert tuned["format_kept"] > base["format_kept"]
    assert tuned["field_accuracy"] > base["field_accuracy"] + 0.3
    assert tuned["loss"] < base["loss"] and tuned["token_accuracy"] > base["token_accuracy"]
    assert report["verdict"].startswith(f"fine-tuned: {100 * tuned['exact']:.0f} % exact (base: ")
    assert "validation loss lowest at epoch" in report["verdict"]
    assert {w["code"] for w in report["warnings"]} == {"small_held_out_set"}  # 12 examples say little
    pairs = {(f"Ticket: {question}", answer) for question, answer in held_out}
    for worst in report["worst_examples"]:
        assert (worst["prompt"][-1]["content"], worst["target"]) in pairs
        assert worst["fine_tuned_answer"] != worst["target"] and isinstance(worst["base_answer"], str)
    wrong = round((1 - tuned["exact"]) * 12)
    assert len(report["worst_examples"]) == min(wrong, 5)

    # The same report as a results file, beside the metrics CSV.
    files = [client.files.retrieve(file_id) for file_id in job.result_files]
    assert sorted(f.filename for f in files) == ["evaluation.json", "step_metrics.csv"]
    assert {f.purpose for f in files} == {"fine-tune-results"}
    stored = json.loads(client.files.content(next(f.id for f in files if f.filename == "evaluation.json")).text)
    assert stored == {k: v for k, v in report.items() if k not in ("object", "fine_tuning_job_id")}
    events = [e for e in client.fine_tuning.jobs.list_events(job_id, limit=100)]
    assert any(e.message == f"Evaluation: {report['verdict']}" for e in events)

    # The epoch that was not kept, measured on the same examples.
    kept_epoch = int(report["verdict"].split("lowest at epoch ")[1].split()[0])
    [other] = [c for c in client.fine_tuning.jobs.checkpoints.list(job_id) if c.step_number != 6 * kept_epoch]
    [earlier] = report["checkpoints"]
    assert earlier["model"] == other.fine_tuned_model_checkpoint and earlier["examples"] == 12
    assert earlier["loss"] == pytest.approx(other.metrics.valid_loss, rel=1e-2)  # as measured when it was saved

    with pytest.raises(openai.NotFoundError):
        _evaluation(other_client, job_id)


def _reference_code(rng: random.Random) -> str:
    return f"ref: {''.join(rng.choices('ABCDEFGHJKLMNPQRSTUVWXYZ', k=3))}-{rng.randrange(100, 1000)}"


def test_a_run_that_memorises_its_examples_is_warned_about_and_keeps_its_best_epoch(
    client: openai.OpenAI, settings: Settings
) -> None:
    # Each ticket's answer is a random reference code: beyond the format there is nothing to learn that holds for
    # other tickets, so after an epoch or two the model only memorises its twelve codes.
    rng = random.Random(0)
    memorise = [(question, _reference_code(rng)) for question, _ in TICKETS]
    held_out = [(question, _reference_code(rng)) for question, _ in HELD_OUT]
    job_id = _train(
        client,
        settings,
        memorise,
        held_out,
        seed=2,
        hyperparameters={"n_epochs": 6, "batch_size": 2, "learning_rate_multiplier": 2},
    )
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "succeeded", job.error
    report = _evaluation(client, job_id)
    overfitting = [w for w in report["warnings"] if w["code"] == "overfitting"]
    assert len(overfitting) == 1, report["warnings"]
    events = list(client.fine_tuning.jobs.list_events(job_id, limit=100))
    kept = next(e for e in events if e.message.startswith("Validation loss rose"))
    assert kept.data["best_epoch"] < 6
    assert f"epoch {kept.data['best_epoch']} is kept" in overfitting[0]["message"]
    assert f"validation loss lowest at epoch {kept.data['best_epoch']} of 6 (kept)" in report["verdict"]
    valid_losses = {
        e.data["step"]: e.data["valid_loss"] for e in events if e.type == "metrics" and e.data.get("valid_loss")
    }
    kept_loss = valid_losses[6 * kept.data["best_epoch"]]  # 6 steps an epoch
    assert report["fine_tuned_model"]["loss"] == pytest.approx(kept_loss, rel=1e-2)  # the kept epoch's model answered
    # the three last epochs, each worse on the held-out tickets than the kept one
    assert [c["model"].rsplit("-", 1)[1] for c in report["checkpoints"]] == ["36", "30", "24"]
    assert all(c["loss"] > report["fine_tuned_model"]["loss"] for c in report["checkpoints"])


def _evaluate(client: openai.OpenAI, settings: Settings, **body: object) -> dict:
    """An evaluation asked for through the API and run to its end by a worker in this process."""
    created = client.post("/evaluations", body=body, cast_to=object)
    assert created["status"] == "queued", created  # type: ignore[index]
    run_evaluation(settings, registry_from_settings(settings), created["id"])  # type: ignore[index]
    return client.get(f"/evaluations/{created['id']}", cast_to=object)  # type: ignore[index,return-value]


def test_the_published_model_is_refit_on_the_validation_file_too_and_the_report_says_which_it_measured(
    tickets: TicketJob, settings: Settings
) -> None:
    client = tickets.client
    job = client.fine_tuning.jobs.retrieve(tickets.job_id)
    of_job = _evaluation(client, tickets.job_id)
    published = of_job["published_model"]
    kept_epoch = int(of_job["verdict"].split("lowest at epoch ")[1].split()[0])
    assert published["kind"] == "refit" and published["epochs"] == kept_epoch
    assert (published["training_examples"], published["measured_model_training_examples"]) == (60, 48)
    events = [e.message for e in client.fine_tuning.jobs.list_events(tickets.job_id, limit=100)]
    assert any(m.startswith("Publishing: epoch") and "all 60 examples" in m for m in events)

    # The published model trained on the validation file: on it, it does better than the report's model.
    done = _evaluate(client, settings, model=job.fine_tuned_model, file=job.validation_file, max_examples=12)
    assert done["status"] == "succeeded", done["error"]
    assert done["report"]["model"]["loss"] < of_job["fine_tuned_model"]["loss"]


def test_an_evaluation_of_the_measured_checkpoint_on_the_validation_file_repeats_the_jobs_report(
    tickets: TicketJob, settings: Settings
) -> None:
    client = tickets.client
    job = client.fine_tuning.jobs.retrieve(tickets.job_id)
    kept_epoch = int(_evaluation(client, tickets.job_id)["verdict"].split("lowest at epoch ")[1].split()[0])
    measured = next(c for c in client.fine_tuning.jobs.checkpoints.list(job.id) if c.step_number == 6 * kept_epoch)
    done = _evaluate(
        client, settings, model=measured.fine_tuned_model_checkpoint, file=job.validation_file, max_examples=12
    )

    assert done["status"] == "succeeded" and done["error"] is None, done["error"]
    assert done["baseline"] == settings.default_base_model and done["finished_at"] >= done["created_at"]
    report, of_job = done["report"], _evaluation(client, tickets.job_id)
    assert report["held_out_examples"] == of_job["held_out_examples"] == 12
    for side, job_side in (("model", "fine_tuned_model"), ("baseline", "base_model")):
        scores = {k: v for k, v in report[side].items() if k not in ("loss", "token_accuracy")}
        assert scores == {k: v for k, v in of_job[job_side].items() if k not in ("loss", "token_accuracy")}
        assert report[side]["loss"] == pytest.approx(of_job[job_side]["loss"], rel=1e-3)
    assert report["verdict"].startswith(f"model: {100 * report['model']['exact']:.0f} % exact (baseline: ")
    assert [w["model_answer"] for w in report["worst_examples"]] == [
        w["fine_tuned_answer"] for w in of_job["worst_examples"]
    ]


def test_two_fine_tunes_compared_on_a_file_of_new_tickets(
    tickets: TicketJob, other_client: openai.OpenAI, settings: Settings
) -> None:
    client = tickets.client
    job = client.fine_tuning.jobs.retrieve(tickets.job_id)
    kept_epoch = int(_evaluation(client, tickets.job_id)["verdict"].split("lowest at epoch ")[1].split()[0])
    other = next(c for c in client.fine_tuning.jobs.checkpoints.list(job.id) if c.step_number != 6 * kept_epoch)
    unseen = client.files.create(file=("unseen.jsonl", chat_jsonl(tickets.unseen)), purpose="fine-tune")

    done = _evaluate(
        client,
        settings,
        model=job.fine_tuned_model,
        baseline=other.fine_tuned_model_checkpoint,
        file=unseen.id,
        max_examples=20,
    )

    assert done["status"] == "succeeded", done["error"]
    assert done["baseline"] == other.fine_tuned_model_checkpoint and done["max_examples"] == 20
    report = done["report"]
    assert report["held_out_examples"] == 20  # the first 20 of the file's 28
    assert report["model"]["loss"] != report["baseline"]["loss"]  # two different adapters answered
    assert report["model"]["format_kept"] > 0.5 and report["baseline"]["format_kept"] > 0.5  # both learned it
    with pytest.raises(openai.NotFoundError):
        other_client.get(f"/evaluations/{done['id']}", cast_to=object)
    listed = client.get("/evaluations", cast_to=object)
    assert done["id"] in [e["id"] for e in listed["data"]]  # type: ignore[index]


def test_a_failed_evaluation_still_publishes_the_model_and_says_why(
    client: openai.OpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the held-out answers could not be generated")

    monkeypatch.setattr("worker.job_evaluation.evaluate_fine_tune", broken)
    job_id = _train(client, settings, TICKETS, HELD_OUT, hyperparameters={"n_epochs": 1, "batch_size": 4})

    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "succeeded" and job.fine_tuned_model
    assert [client.files.retrieve(f).filename for f in job.result_files] == ["step_metrics.csv"]
    events = list(client.fine_tuning.jobs.list_events(job_id, limit=100))
    failed = next(e for e in events if e.message.startswith("The evaluation failed"))
    assert failed.level == "warn" and "the held-out answers could not be generated" in failed.message
    with pytest.raises(openai.NotFoundError) as missing:
        _evaluation(client, job_id)
    assert "the evaluation failed (its events say which)" in missing.value.message
    reply = client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "Ticket: refund"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None


@pytest.mark.timeout(300)  # a report waiting for answers that never come fails here instead of hanging the run
def test_an_engine_that_fails_while_answering_the_held_out_prompts_fails_the_report_not_the_job(
    client: openai.OpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The held-out answers come from the serving engine (on the tiny model, fast): a cache it cannot build is an
    error the report gets, and the job still publishes its model, without a report."""

    def unsupported(*_: object) -> None:
        raise NotImplementedError("continuous batching needs full-attention cache layers (no sliding window)")

    monkeypatch.setattr("app.serving.batching.new_cache", unsupported)
    training_file = client.files.create(file=("train.jsonl", chat_jsonl(TICKETS)), purpose="fine-tune")
    validation_file = client.files.create(file=("valid.jsonl", chat_jsonl(HELD_OUT)), purpose="fine-tune")
    created = client.fine_tuning.jobs.create(
        model=TINY_MODEL_ID, training_file=training_file.id, validation_file=validation_file.id,
        hyperparameters={"n_epochs": 1, "batch_size": 4},
    )  # fmt: skip
    run_job(settings, registry_from_settings(settings), created.id)

    job = client.fine_tuning.jobs.retrieve(created.id)
    assert job.status == "succeeded" and job.fine_tuned_model
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    failed = next(e for e in events if e.message.startswith("The evaluation failed"))
    assert failed.level == "warn" and "NotImplementedError: continuous batching needs full-attention" in failed.message
    with pytest.raises(openai.NotFoundError):
        _evaluation(client, job.id)
    monkeypatch.undo()
    reply = client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "Ticket: refund"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None
