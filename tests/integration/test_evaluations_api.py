"""Asking for an evaluation: what is checked when it is created, and how one that cannot run ends."""

import openai
import pytest

from app.core.settings import Settings
from app.ml.base_models.from_settings import registry_from_settings
from tests.helpers.datasets import chat_jsonl
from worker.evaluation_runner import run_evaluation

BASE = "smollm2-135m-instruct"


@pytest.fixture
def file_id(client: openai.OpenAI) -> str:
    return client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id


def _create(client: openai.OpenAI, **body: object) -> dict:
    return client.post("/evaluations", body=body, cast_to=object)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("body", "error", "param"),
    [
        ({"model": "no-such-model"}, openai.NotFoundError, "model"),
        ({"model": BASE, "baseline": "ft:no-such-model"}, openai.NotFoundError, "baseline"),
        ({"model": BASE, "max_examples": 0}, openai.BadRequestError, "max_examples"),
        ({"model": BASE, "max_tokens": 5000}, openai.BadRequestError, "max_tokens"),
        ({"model": BASE, "temperature": 1}, openai.BadRequestError, "temperature"),
    ],
)
def test_a_bad_request_names_the_field(
    client: openai.OpenAI, file_id: str, body: dict, error: type[openai.APIStatusError], param: str
) -> None:
    with pytest.raises(error) as raised:
        _create(client, file=file_id, **body)
    assert raised.value.body["param"] == param  # type: ignore[index]


def test_another_organisations_file_is_not_found(client: openai.OpenAI, other_client: openai.OpenAI) -> None:
    theirs = other_client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    with pytest.raises(openai.NotFoundError) as raised:
        _create(client, model=BASE, file=theirs)
    assert raised.value.body["param"] == "file" and theirs in raised.value.message  # type: ignore[index]


def test_an_evaluation_whose_file_was_deleted_fails_saying_so(
    client: openai.OpenAI, other_client: openai.OpenAI, file_id: str, settings: Settings
) -> None:
    created = _create(client, model=BASE, file=file_id)
    assert (created["status"], created["baseline"], created["report"]) == ("queued", BASE, None)
    client.files.delete(file_id)

    run_evaluation(settings, registry_from_settings(settings), created["id"])

    done = client.get(f"/evaluations/{created['id']}", cast_to=object)
    assert done["status"] == "failed" and done["report"] is None  # type: ignore[index]
    assert done["error"]["code"] == "file_not_found" and file_id in done["error"]["message"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        other_client.get(f"/evaluations/{created['id']}", cast_to=object)
