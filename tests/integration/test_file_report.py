"""The data report catches what makes fine-tunes fail quietly, naming the lines, through the API."""

import json

import openai
import pytest

from app.core.settings import Settings
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.waiting import eventually


def line(question: str, answer: str) -> bytes:
    messages = [{"role": "user", "content": f"Ticket: {question}"}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": messages}).encode() + b"\n"


def report(client: openai.OpenAI, file_id: str, **query: str) -> dict:
    return client.get(f"/files/{file_id}/report", cast_to=object, options={"params": query})  # type: ignore[return-value]


@pytest.fixture
def messy_file(client: openai.OpenAI) -> str:
    content = (
        chat_jsonl()  # lines 1-12, every answer "category: …\npriority: …\nteam: …"
        + line("  my INVOICE charged me twice this month. ", TICKETS[0][1])  # 13: line 1 again, other case/space
        + line("How do I export my data to CSV?", "category: billing\npriority: high\nteam: payments")  # 14: vs line 2
        + line("Is there a mobile app?", "Yes, for iOS and Android.")  # 15: breaks the answer shape
        + line("What is your address?", "?")  # 16: a one-character answer
    )
    return client.files.create(file=("messy.jsonl", content), purpose="fine-tune").id


def test_report_names_duplicates_conflicts_shape_breaks_and_short_answers(
    client: openai.OpenAI, messy_file: str
) -> None:
    body = report(client, messy_file)
    assert body["object"] == "file.report" and body["format"] == "chat"
    assert body["counts"]["examples"] == 16
    assert body["duplicates"]["groups"] == [[1, 13]]
    assert [group["lines"] for group in body["conflicts"]["groups"]] == [[2, 14]]
    assert body["shape"]["lines"] == [15, 16]
    assert body["short_targets"]["lines"] == [16]
    codes = {warning["code"] for warning in body["warnings"]}
    assert {"duplicate_examples", "conflicting_targets", "few_examples"} <= codes


def test_report_counts_tokens_with_the_base_models_tokenizer(
    client: openai.OpenAI, messy_file: str, settings: Settings
) -> None:
    tokens = report(client, messy_file, model=settings.default_base_model)["tokens"]
    assert tokens["model"] == settings.default_base_model and tokens["examples"] == 16
    assert 0 < tokens["min"] <= tokens["mean"] <= tokens["p95"] <= tokens["max"] < tokens["max_length"]
    assert tokens["total_tokens"] >= 16 * tokens["min"]
    assert tokens["over_max_length"]["count"] == 0
    assert (
        tokens["estimated_training_tokens_auto"] == tokens["total_tokens"] * report(client, messy_file)["n_epochs_auto"]
    )
    with pytest.raises(openai.NotFoundError):
        report(client, messy_file, model="no-such-model")


def test_file_status_details_sum_up_the_report(client: openai.OpenAI) -> None:
    content = chat_jsonl() + chat_jsonl(TICKETS[:1])  # line 13 repeats line 1
    file_id = client.files.create(file=("dup.jsonl", content), purpose="fine-tune").id
    details = eventually(  # computed right after the upload answered
        lambda: "warning" in (text := client.files.retrieve(file_id).status_details or "") and text,
        timeout=30,
        what="the report's warnings in status_details",
    )
    assert details.startswith("13 chat examples") and "duplicate" in details.lower()


def test_another_organisation_cannot_read_the_report(
    client: openai.OpenAI, other_client: openai.OpenAI, messy_file: str
) -> None:
    with pytest.raises(openai.NotFoundError):
        report(other_client, messy_file)
