"""Every dataset format through the API: accepted where it can be trained, refused where it cannot."""

import json

import openai
import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.settings import Settings
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.reports import finished_report
from tests.helpers.storage import stored_state

BASE = "smollm2-135m-instruct"


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


PROMPT_COMPLETION = jsonl([{"prompt": f"Ticket: {q}", "completion": a} for q, a in TICKETS])
PREFERENCE_PAIRS = jsonl([{"prompt": f"Ticket: {q}", "chosen": a, "rejected": "no idea"} for q, a in TICKETS])
OPENAI_PREFERENCE = jsonl(
    [
        {
            "input": {"messages": [{"role": "user", "content": f"Ticket: {q}"}]},
            "preferred_output": [{"role": "assistant", "content": a}],
            "non_preferred_output": [{"role": "assistant", "content": "no idea"}],
        }
        for q, a in TICKETS
    ]
)


@pytest.mark.parametrize(
    ("content", "format"),
    [
        (chat_jsonl(), "chat"),
        (PROMPT_COMPLETION, "prompt_completion"),
        (PREFERENCE_PAIRS, "preference"),
        (OPENAI_PREFERENCE, "preference"),
    ],
)
def test_each_format_is_accepted_and_recognised(client: openai.OpenAI, content: bytes, format: str) -> None:
    uploaded = client.files.create(file=("data.jsonl", content), purpose="fine-tune")
    assert uploaded.status == "processed"
    body = finished_report(client, uploaded.id)
    assert body["format"] == format and body["counts"]["examples"] == len(TICKETS)


def test_supervised_jobs_take_prompt_completion_but_not_preference_pairs(client: openai.OpenAI) -> None:
    completions = client.files.create(file=("pc.jsonl", PROMPT_COMPLETION), purpose="fine-tune").id
    assert client.fine_tuning.jobs.create(model=BASE, training_file=completions).status == "queued"
    pairs = client.files.create(file=("pairs.jsonl", PREFERENCE_PAIRS), purpose="fine-tune").id
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(model=BASE, training_file=pairs)
    assert error.value.code == "invalid_training_file" and error.value.param == "training_file"
    assert "preference" in error.value.message


def test_dpo_jobs_take_preference_pairs_and_echo_their_settings(client: openai.OpenAI) -> None:
    pairs = client.files.create(file=("pairs.jsonl", PREFERENCE_PAIRS), purpose="fine-tune").id
    openai_pairs = client.files.create(file=("openai.jsonl", OPENAI_PREFERENCE), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=pairs,
        validation_file=openai_pairs,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2}}},
        extra_body={"dpo": {"rpo_alpha": 0.5}},
    )
    assert job.method is not None and job.method.type == "dpo" and job.method.dpo is not None
    hyperparameters = job.method.dpo.hyperparameters
    assert hyperparameters is not None and (hyperparameters.beta, hyperparameters.n_epochs) == (0.1, 2)  # auto β
    assert job.method.dpo.rpo_alpha == 0.5 and job.method.dpo.simpo_gamma == 0.0  # type: ignore[attr-defined]

    chats = client.files.create(file=("chats.jsonl", chat_jsonl()), purpose="fine-tune").id
    refusals = [
        ({"training_file": chats, "method": {"type": "dpo"}}, "training_file", "DPO trains on preference pairs"),
        ({"training_file": pairs, "extra_body": {"dpo": {"rpo_alpha": 1}}}, "dpo", "only for method.type 'dpo'"),
        (
            {"training_file": pairs, "method": {"type": "dpo"}, "extra_body": {"lora": {"train_on_inputs": True}}},
            "lora.train_on_inputs",
            "only for supervised fine-tuning",
        ),
        ({"training_file": pairs, "method": {"type": "reinforcement"}}, "method.type", "not supported"),
        (
            {"training_file": pairs, "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}},
            "method.dpo.hyperparameters.beta",
            "",
        ),
    ]
    for request, param, message in refusals:
        with pytest.raises(openai.BadRequestError) as error:
            client.fine_tuning.jobs.create(model=BASE, **request)  # type: ignore[arg-type]
        assert error.value.param == param and message in error.value.message, request


def test_prompt_files_are_for_distillation_jobs(client: openai.OpenAI) -> None:
    prompts = client.files.create(
        file=("prompts.jsonl", jsonl([{"prompt": f"Ticket: {q}"} for q, _ in TICKETS])), purpose="fine-tune"
    ).id
    with pytest.raises(openai.BadRequestError) as supervised:
        client.fine_tuning.jobs.create(model=BASE, training_file=prompts)
    assert supervised.value.param == "training_file" and "holds prompts examples" in supervised.value.message
    with pytest.raises(openai.NotFoundError) as unknown:
        client.fine_tuning.jobs.create(
            model=BASE,
            training_file=prompts,
            method={"type": "distillation", "distillation": {"teacher_model": "ft:nobody:x"}},  # type: ignore[arg-type, typeddict-item]
        )
    assert unknown.value.param == "method.distillation.teacher_model"
    with pytest.raises(openai.BadRequestError) as missing:
        client.fine_tuning.jobs.create(model=BASE, training_file=prompts, method={"type": "distillation"})  # type: ignore[arg-type, typeddict-item]
    assert missing.value.param == "method.distillation"
    chats = client.files.create(file=("chats.jsonl", chat_jsonl()), purpose="fine-tune").id  # their prompts serve too
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=chats,
        method={"type": "distillation", "distillation": {"teacher_model": BASE, "max_tokens": 32}},  # type: ignore[arg-type, typeddict-item]
    )
    assert job.method.model_extra["distillation"]["max_tokens"] == 32  # type: ignore[union-attr]
    client.fine_tuning.jobs.cancel(job.id)


def test_mixing_formats_names_the_line(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.files.create(
            file=("mixed.jsonl", chat_jsonl() + PROMPT_COMPLETION[:200].split(b"\n")[0] + b"\n"), purpose="fine-tune"
        )
    errors = error.value.body["validation"]["errors"]
    assert [(item["line"], item["code"]) for item in errors] == [(len(TICKETS) + 1, "mixed_formats")]


def test_a_line_over_the_limit_and_deep_nesting_are_refused(settings: Settings, org_key: str) -> None:
    before = stored_state(settings)
    long_line = json.dumps({"prompt": "x" * 5000, "completion": "y"}).encode() + b"\n"
    nested = b'{"prompt": ' + b"[" * 200 + b"]" * 200 + b', "completion": "y"}\n'
    with TestClient(create_app(settings.model_copy(update={"max_line_bytes": 1000}))) as api:
        response = api.post(
            "/v1/files",
            headers={"Authorization": f"Bearer {org_key}"},
            files={"file": ("t.jsonl", PROMPT_COMPLETION + long_line + nested)},
            data={"purpose": "fine-tune"},
        )
    assert response.status_code == 400
    errors = response.json()["error"]["validation"]["errors"]
    assert [(item["line"], item["code"]) for item in errors] == [(13, "line_too_long"), (14, "too_deeply_nested")]
    assert stored_state(settings) == before
