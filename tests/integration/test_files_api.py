"""Uploading datasets through the openai SDK and curl-style HTTP; bad files leave nothing behind."""

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote

import httpx
import openai
import pytest
import sqlalchemy.exc
from fastapi.testclient import TestClient
from sqlalchemy import event, select

from app.api.main import create_app
from app.core.db import engine_for, transaction
from app.core.settings import Settings
from app.core.tables import StoredFile
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.reports import finished_report
from tests.helpers.storage import stored_state
from tests.helpers.waiting import eventually


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


def validation_errors(error: openai.BadRequestError) -> list[tuple[int | None, str]]:
    """(line, code) of each error the server reported for a refused file."""
    return [(item["line"], item["code"]) for item in error.body["validation"]["errors"]]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (chat_jsonl() + b'{"messages": [oops\n', [(len(TICKETS) + 1, "invalid_json")]),
        (
            chat_jsonl() + json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
            [(13, "no_assistant_message")],
        ),
        (
            json.dumps({"messages": [{"role": "robot", "content": "hi"}]}).encode() + b"\n" + chat_jsonl(),
            [(1, "unknown_role")],
        ),
        (b"", [(None, "empty_file")]),
        (b"\n\n", [(None, "empty_file")]),
        (b"[1, 2]\n" + chat_jsonl(), [(1, "not_a_json_object")]),
        (chat_jsonl(TICKETS[:5]), [(None, "too_few_examples")]),
        (b"\xff\xfe binary \x00\x01\n" + chat_jsonl(), [(1, "not_utf8")]),
        (chat_jsonl() + b'{"messages": [{"role": "user", "content": "cut', [(13, "invalid_json")]),
    ],
)
def test_bad_upload_is_refused_naming_each_bad_line_and_leaves_nothing(
    client: openai.OpenAI, settings: Settings, content: bytes, expected: list[tuple[int | None, str]]
) -> None:
    before = stored_state(settings)
    with pytest.raises(openai.BadRequestError) as error:
        client.files.create(file=("bad.jsonl", content), purpose="fine-tune")
    assert validation_errors(error.value) == expected
    assert error.value.code == "invalid_file_format" and error.value.body["param"] == "file"
    if expected[0][0] is not None:
        assert f"line {expected[0][0]}" in error.value.message.lower()
    assert stored_state(settings) == before


def test_wrong_purpose_is_refused_and_leaves_nothing(client: openai.OpenAI, settings: Settings) -> None:
    before = stored_state(settings)
    with pytest.raises(openai.BadRequestError) as error:
        client.files.create(file=("t.jsonl", chat_jsonl()), purpose="assistants")
    assert "'assistants' is not a supported purpose" in error.value.message
    assert stored_state(settings) == before


def test_error_names_several_bad_lines(client: openai.OpenAI) -> None:
    bad = b'{"messages": []}\n'
    content = bad + chat_jsonl() + bad + b"{}\n"
    with pytest.raises(openai.BadRequestError) as error:
        client.files.create(file=("bad.jsonl", content), purpose="fine-tune")
    assert [line for line, _ in validation_errors(error.value)] == [1, 14, 15]
    assert "line 1" in error.value.message.lower() and error.value.body["validation"]["error_count"] == 3


def test_curl_style_upload_with_multipart_form(http) -> None:  # type: ignore[no-untyped-def]
    name = "tickets; 票据 ünïcode.jsonl"
    response = http.post("/v1/files", files={"file": (name, chat_jsonl())}, data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "file" and response.json()["filename"] == name
    download = http.get(f"/v1/files/{response.json()['id']}/content")
    assert download.content == chat_jsonl()
    disposition = download.headers["content-disposition"]
    assert unquote(disposition.split("filename*=UTF-8''", 1)[1]) == name
    missing = http.post("/v1/files", files={"purpose": (None, "fine-tune")})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    not_multipart = http.post("/v1/files", data={"purpose": "fine-tune"})
    assert not_multipart.status_code == 400 and "multipart/form-data" in not_multipart.json()["error"]["message"]


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


def test_a_retried_upload_with_an_idempotency_key_returns_the_first_file(
    client: openai.OpenAI, settings: Settings
) -> None:
    first = client.files.create(
        file=("t.jsonl", chat_jsonl()), purpose="fine-tune", extra_headers={"Idempotency-Key": "upload-1"}
    )
    before = stored_state(settings)
    again = client.files.create(
        file=("t.jsonl", chat_jsonl()), purpose="fine-tune", extra_headers={"Idempotency-Key": "upload-1"}
    )
    assert again.id == first.id and again.created_at == first.created_at
    assert stored_state(settings) == before  # no second row, no second object
    with pytest.raises(openai.UnprocessableEntityError) as error:
        client.files.create(
            file=("t.jsonl", chat_jsonl(TICKETS[1:] + TICKETS[:1])),
            purpose="fine-tune",
            extra_headers={"Idempotency-Key": "upload-1"},
        )
    assert error.value.code == "idempotency_key_reused"
    assert stored_state(settings) == before


def _report_pending(settings: Settings, file_id: str) -> bool:
    with transaction(settings.require("database_url")) as session:
        return session.scalar(select(StoredFile.report.is_(None)).where(StoredFile.id == file_id)) is not False


def test_a_download_holds_no_database_connection_while_it_streams(http, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """So that more downloads (and streamed answers) can run at once than the pool has connections."""
    data = chat_jsonl(TICKETS * 4000)  # ~8 MB: more than loopback buffers hold, so the body is still streaming
    file_id = http.post("/v1/files", files={"file": ("big.jsonl", data)}, data={"purpose": "fine-tune"}).json()["id"]
    pool = engine_for(settings.require("database_url")).pool
    eventually(  # the upload's data report is written in the background first
        lambda: not _report_pending(settings, file_id) and not pool.checkedout(),
        timeout=60,
        interval=0.1,
        what="the upload's data report written",
    )
    with http.stream("GET", f"/v1/files/{file_id}/content") as download:
        chunks = download.iter_bytes()
        first = next(chunks)
        assert pool.checkedout() == 0
        assert first + b"".join(chunks) == data


@contextmanager
def statements(settings: Settings) -> Iterator[list[str]]:
    """The SQL the API process sends meanwhile (the API runs in this process, on the same engine)."""
    engine, sent = engine_for(settings.require("database_url")), []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_listing_retrieving_and_deleting_files_never_load_their_reports(
    client: openai.OpenAI, settings: Settings
) -> None:
    """Audit #8: every `select(StoredFile)` loaded the whole data report, up to megabytes per file."""
    ids = [client.files.create(file=(f"f{i}.jsonl", chat_jsonl()), purpose="fine-tune").id for i in range(2)]
    finished_report(client, ids[0])
    with statements(settings) as sent:
        assert len(client.files.list().data) == 2
        client.files.retrieve(ids[0])
        client.files.delete(ids[0])
    file_queries = [statement for statement in sent if "FROM files" in statement]
    assert file_queries and not [q for q in file_queries if re.search(r"files\.report\b(?!_)", q)], file_queries


def test_a_database_pool_without_a_free_connection_is_a_503(
    http: httpx.Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit #5: the pool's TimeoutError (every connection held, e.g. by slow requests) was a 500."""
    engine = engine_for(settings.require("database_url"))
    monkeypatch.setattr(engine.pool, "_timeout", 0.2)  # instead of 30 s: the request gives up at once
    held = []
    try:
        with pytest.raises(sqlalchemy.exc.TimeoutError):
            while True:  # take every connection the pool will give
                held.append(engine.connect())
        answer = http.get("/v1/files")
    finally:
        for connection in held:
            connection.close()
    assert answer.status_code == 503 and "Retry-After" in answer.headers
    assert "database" in answer.json()["error"]["message"]
    assert http.get("/v1/files").status_code == 200
