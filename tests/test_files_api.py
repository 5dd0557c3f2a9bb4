"""Uploading datasets through the openai SDK and curl-style HTTP; bad files leave nothing behind."""

import json
from urllib.parse import unquote

import openai
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.config import Settings
from app.db import transaction
from app.main import create_app
from app.storage import store_for
from app.tables import StoredFile
from tests.datasets import TICKETS, chat_jsonl


def stored_state(settings: Settings) -> tuple[int, int]:
    """(file rows, objects in the bucket) across all organisations."""
    with transaction(settings.require("database_url")) as session:
        rows = session.scalar(select(func.count()).select_from(StoredFile))
    return rows or 0, len(list(store_for(settings).list_keys("orgs/")))


def test_upload_is_processed_listed_downloaded_and_deleted(client: openai.OpenAI) -> None:
    data = chat_jsonl()
    uploaded = client.files.create(file=("tickets.jsonl", data), purpose="fine-tune")
    assert uploaded.status == "processed"
    assert uploaded.bytes == len(data) and uploaded.filename == "tickets.jsonl"
    assert client.files.wait_for_processing(uploaded.id).status == "processed"

    assert [f.id for f in client.files.list()] == [uploaded.id]
    assert client.files.retrieve(uploaded.id).purpose == "fine-tune"
    assert client.files.content(uploaded.id).read() == data

    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_file_list_pages_with_after_and_limit(client: openai.OpenAI) -> None:
    ids = [client.files.create(file=(f"f{i}.jsonl", chat_jsonl()), purpose="fine-tune").id for i in range(3)]
    first = client.files.list(limit=2)
    assert [f.id for f in first.data] == [ids[2], ids[1]] and first.has_more
    assert [f.id for f in client.files.list(limit=2, after=ids[1]).data] == [ids[0]]
    assert [f.id for f in client.files.list(limit=2)] == list(reversed(ids))  # auto-pagination


@pytest.mark.parametrize(
    ("content", "purpose", "expected"),
    [
        (chat_jsonl() + b'{"messages": [oops\n', "fine-tune", "line 7: not valid JSON"),
        (
            json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode() + b"\n",
            "fine-tune",
            "line 1: no assistant message",
        ),
        (
            json.dumps({"messages": [{"role": "robot", "content": "hi"}]}).encode(),
            "fine-tune",
            "line 1: message 1 has role 'robot'",
        ),
        (b"", "fine-tune", "The file is empty"),
        (b"\n\n", "fine-tune", "The file is empty"),
        (chat_jsonl(), "assistants", "'assistants' is not a supported purpose"),
        (b"[1, 2]\n", "fine-tune", "line 1: expected a JSON object"),
    ],
)
def test_bad_upload_is_rejected_naming_the_problem_and_leaves_nothing(
    client: openai.OpenAI, settings: Settings, content: bytes, purpose: str, expected: str
) -> None:
    before = stored_state(settings)
    with pytest.raises(openai.BadRequestError) as error:
        client.files.create(file=("bad.jsonl", content), purpose=purpose)  # type: ignore[arg-type]
    assert expected in error.value.message
    assert error.value.body["type"] == "invalid_request_error"
    assert stored_state(settings) == before


def test_error_names_several_bad_lines(client: openai.OpenAI) -> None:
    good = chat_jsonl(TICKETS[:1])
    bad = b'{"messages": []}\n'
    with pytest.raises(openai.BadRequestError) as error:
        client.files.create(file=("bad.jsonl", good + bad + good + bad), purpose="fine-tune")
    assert "line 2:" in error.value.message and "line 4:" in error.value.message


def test_curl_style_upload_with_multipart_form(http) -> None:  # type: ignore[no-untyped-def]
    name = "tickets; 票据 ünïcode.jsonl"
    response = http.post("/v1/files", files={"file": (name, chat_jsonl())}, data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "file" and response.json()["filename"] == name
    download = http.get(f"/v1/files/{response.json()['id']}/content")
    assert download.content == chat_jsonl()
    disposition = download.headers["content-disposition"]
    assert unquote(disposition.split("filename*=UTF-8''", 1)[1]) == name
    missing = http.post("/v1/files", data={"purpose": "fine-tune"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"


def test_upload_over_the_size_limit_is_refused(settings: Settings, org_key: str) -> None:
    small_limit = settings.model_copy(update={"max_upload_bytes": 300})
    before = stored_state(settings)
    with TestClient(create_app(small_limit)) as api:
        response = api.post(
            "/v1/files",
            headers={"Authorization": f"Bearer {org_key}"},
            files={"file": ("big.jsonl", chat_jsonl())},
            data={"purpose": "fine-tune"},
        )
    assert response.status_code == 413
    assert "larger than the limit of 300 bytes" in response.json()["error"]["message"]
    assert stored_state(settings) == before
