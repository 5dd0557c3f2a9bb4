"""Creating, listing and cancelling jobs; hyperparameters; bad requests."""

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from app.core.settings import Settings
from app.ml.hyperparameters import auto_epochs
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.reports import finished_report

BASE = "smollm2-135m-instruct"


@pytest.fixture
def training_file(client: openai.OpenAI) -> str:
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    finished_report(client, file_id)  # computed in the background; a job created before it has no warnings
    return file_id


def test_auto_asked_for_explicitly_is_resolved_like_the_default(client: openai.OpenAI, training_file: str) -> None:
    auto = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    job = client.fine_tuning.jobs.create(model=BASE, training_file=training_file, hyperparameters=auto)  # type: ignore[arg-type]
    assert job.hyperparameters.n_epochs == auto_epochs(len(TICKETS))
    assert job.hyperparameters.learning_rate_multiplier == 1.0


def test_create_echoes_resolved_hyperparameters_as_numbers(client: openai.OpenAI, training_file: str) -> None:
    job = client.fine_tuning.jobs.create(model=BASE, training_file=training_file, suffix="tickets", seed=7)
    # files are checked on upload and the job's message is with the broker: it waits for a worker
    assert job.status == "queued" and job.error is None and job.fine_tuned_model is None
    assert job.seed == 7 and job.training_file == training_file and job.model == BASE
    assert job.hyperparameters.n_epochs == auto_epochs(len(TICKETS))
    assert isinstance(job.hyperparameters.batch_size, int)
    assert job.hyperparameters.learning_rate_multiplier == 1.0
    assert job.method is not None and job.method.type == "supervised"
    assert client.fine_tuning.jobs.retrieve(job.id).id == job.id
    events = [(event.level, event.message) for event in client.fine_tuning.jobs.list_events(job.id)]
    assert events[0] == ("info", "Files validated; job queued for a training worker")
    assert events[-1] == ("info", "Created fine-tuning job")
    # the data report's warnings reach the people watching the job
    assert (
        "warn",
        f"training_file {training_file}: Only 12 examples: 50 or more usually give a clearly better fine-tune.",
    ) in events


def test_method_hyperparameters_are_used(client: openai.OpenAI, training_file: str) -> None:
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training_file,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 3, "learning_rate_multiplier": 0.5}},
        },
    )
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size) == (2, 3)
    assert job.hyperparameters.learning_rate_multiplier == 0.5


def test_list_pages_newest_first(client: openai.OpenAI, training_file: str) -> None:
    ids = [client.fine_tuning.jobs.create(model=BASE, training_file=training_file).id for _ in range(3)]
    page = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == [ids[2], ids[1]] and page.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2, after=ids[1]).data] == [ids[0]]


def test_cancel_a_waiting_job_and_not_twice(client: openai.OpenAI, training_file: str) -> None:
    job = client.fine_tuning.jobs.create(model=BASE, training_file=training_file)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.cancel(job.id)
    assert "already cancelled" in error.value.message
    messages = [event.message for event in client.fine_tuning.jobs.list_events(job.id)]
    assert messages[0] == "Fine-tuning job cancelled" and messages[-1] == "Created fine-tuning job"


@pytest.mark.parametrize(
    ("overrides", "error_type", "expected"),
    [
        ({"model": "no-such-model"}, openai.NotFoundError, "no-such-model"),
        ({"training_file": "file-doesnotexist"}, openai.NotFoundError, "file-doesnotexist"),
        ({"validation_file": "file-missing"}, openai.NotFoundError, "file-missing"),
        ({"hyperparameters": {"n_epochs": 0}}, openai.BadRequestError, "n_epochs"),
        ({"suffix": "has spaces"}, openai.BadRequestError, "suffix"),
        ({"method": {"type": "dpo"}}, openai.BadRequestError, "DPO trains on preference pairs"),
    ],
)
def test_bad_job_requests_name_the_problem(
    client: openai.OpenAI, training_file: str, overrides: dict, error_type: type, expected: str
) -> None:
    params = {"model": BASE, "training_file": training_file, **overrides}
    with pytest.raises(error_type) as error:
        client.fine_tuning.jobs.create(**params)
    assert expected in error.value.message
    assert client.fine_tuning.jobs.list().data == []


def test_unknown_job_and_model_are_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="ft:nope", messages=[{"role": "user", "content": "hi"}])
    assert error.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_models_list_has_the_default_base_model(client: openai.OpenAI, settings: Settings) -> None:
    models = {m.id: m for m in client.models.list()}
    assert settings.default_base_model in models
    assert models[settings.default_base_model].object == "model"


def test_a_retried_create_with_an_idempotency_key_makes_one_job(
    client: openai.OpenAI, other_client: openai.OpenAI, training_file: str
) -> None:
    key = {"Idempotency-Key": "create-tickets-1"}
    first = client.fine_tuning.jobs.create(model=BASE, training_file=training_file, seed=1, extra_headers=key)
    again = client.fine_tuning.jobs.create(model=BASE, training_file=training_file, seed=1, extra_headers=key)
    assert again.id == first.id
    assert [job.id for job in client.fine_tuning.jobs.list()] == [first.id]
    with pytest.raises(openai.UnprocessableEntityError):
        client.fine_tuning.jobs.create(model=BASE, training_file=training_file, seed=2, extra_headers=key)
    # keys belong to one organisation: the same key elsewhere is a different request
    other_file = other_client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    other = other_client.fine_tuning.jobs.create(model=BASE, training_file=other_file, extra_headers=key)
    assert other.id != first.id


def test_concurrent_creates_with_one_idempotency_key_make_one_job(
    api_base_url: str, org_key: str, training_file: str
) -> None:
    retrying = openai.OpenAI(base_url=f"{api_base_url}/v1", api_key=org_key, max_retries=5)
    key = {"Idempotency-Key": "concurrent-1"}
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = list(
            pool.map(
                lambda _: retrying.fine_tuning.jobs.create(model=BASE, training_file=training_file, extra_headers=key),
                range(4),
            )
        )
    assert len({job.id for job in jobs}) == 1
    assert [job.id for job in retrying.fine_tuning.jobs.list()] == [jobs[0].id]


def test_lora_settings_default_from_the_base_model_and_can_be_set(client: openai.OpenAI, training_file: str) -> None:
    default = client.fine_tuning.jobs.create(model=BASE, training_file=training_file)
    assert default.lora["r"] == 16 and default.lora["alpha"] == 32  # type: ignore[attr-defined]
    assert "q_proj" in default.lora["target_modules"]  # type: ignore[attr-defined]
    chosen = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training_file,
        extra_body={
            "lora": {
                "r": 4,
                "target_modules": ["q_proj", "v_proj"],
                "max_seq_length": 512,
                "lr_scheduler": "cosine",
                "max_grad_norm": 0,
                "weight_decay": 0.01,
                "train_on_inputs": True,
            }
        },
    )
    assert chosen.lora == {  # type: ignore[attr-defined]
        "r": 4,
        "alpha": 8,
        "dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "max_seq_length": 512,
        "warmup_ratio": 0.1,
        "lr_scheduler": "cosine",
        "max_grad_norm": 0,
        "weight_decay": 0.01,
        "train_on_inputs": True,
        "base_learning_rate": 2e-3,
        "quantization": None,
    }


@pytest.mark.parametrize(
    ("lora", "expected"),
    [
        ({"r": 0}, "lora.r"),
        ({"target_modules": ["attention"]}, "has no module 'attention'"),
        ({"max_seq_length": 100_000}, "handles at most 2048 tokens"),
        ({"rank": 8}, "lora.rank"),
        ({"lr_scheduler": "exponential"}, "'linear', 'cosine' or 'constant'"),
        ({"max_grad_norm": -1}, "lora.max_grad_norm"),
        ({"weight_decay": 2}, "lora.weight_decay"),
    ],
)
def test_bad_lora_settings_say_what_is_wrong(
    client: openai.OpenAI, training_file: str, lora: dict, expected: str
) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(model=BASE, training_file=training_file, extra_body={"lora": lora})
    assert expected in error.value.message


def test_evaluation_options_default_can_be_set_and_are_checked(
    client: openai.OpenAI, other_client: openai.OpenAI, training_file: str
) -> None:
    job = client.fine_tuning.jobs.create(model=BASE, training_file=training_file)
    defaults = {"max_examples": 50, "max_tokens": 256, "checkpoints": True, "refit": "auto"}
    assert job.evaluation == defaults  # type: ignore[attr-defined]
    off = client.fine_tuning.jobs.create(
        model=BASE, training_file=training_file, extra_body={"evaluation": {"max_examples": 0}}
    )
    assert client.fine_tuning.jobs.retrieve(off.id).evaluation["max_examples"] == 0  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(
            model=BASE, training_file=training_file, extra_body={"evaluation": {"max_examples": -1}}
        )
    assert error.value.param == "evaluation.max_examples"
    never = client.fine_tuning.jobs.create(
        model=BASE, training_file=training_file, extra_body={"evaluation": {"refit": False}}
    )
    assert client.fine_tuning.jobs.retrieve(never.id).evaluation["refit"] is False  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(
            model=BASE, training_file=training_file, extra_body={"evaluation": {"refit": "sometimes"}}
        )
    assert error.value.param == "evaluation.refit"

    with pytest.raises(openai.NotFoundError) as missing:
        client.get(f"/fine_tuning/jobs/{job.id}/evaluation", cast_to=object)
    assert "it is written when the job succeeds, and the job is queued" in missing.value.message
    with pytest.raises(openai.NotFoundError) as hidden:
        other_client.get(f"/fine_tuning/jobs/{job.id}/evaluation", cast_to=object)
    assert "evaluation" not in hidden.value.message  # another organisation learns nothing about the job
