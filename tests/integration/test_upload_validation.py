"""Uploads are validated in child processes of the API, a bounded number at once per organisation."""

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from app.api.files.validation_process import validation_slots
from app.core.settings import Settings
from app.ml.datasets.validation import DatasetValidator
from tests.helpers.datasets import chat_jsonl
from tests.helpers.waiting import eventually

_BOUNDARY = "held-upload"


def test_uploads_are_validated_outside_the_api_process(client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing a large upload is pure Python: in the API process it held the lock that every request needs
    (`bench/noisy_neighbour.py`: 70 % of it, while another organisation's chats waited)."""

    def not_here(*_: object) -> None:
        raise AssertionError("validated in the API process")

    monkeypatch.setattr(DatasetValidator, "feed_chunk", not_here)
    data = chat_jsonl()
    assert client.files.create(file=("t.jsonl", data), purpose="fine-tune").status == "processed"
    upload = client.uploads.create(bytes=len(data), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    part = client.uploads.parts.create(upload_id=upload.id, data=data)
    assert client.uploads.complete(upload_id=upload.id, part_ids=[part.id]).status == "completed"
    with pytest.raises(openai.BadRequestError, match="Line 2 is not valid JSON"):
        client.files.create(file=("bad.jsonl", data.replace(b"\n", b"\n{", 1)), purpose="fine-tune")


def _held_upload(http: httpx.Client, release: threading.Event) -> httpx.Response:
    """An upload whose second half is sent only once `release` is set: it holds its validation slot meanwhile."""
    data = chat_jsonl()
    head = (
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="held.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()

    def body() -> object:
        yield head + data[: len(data) // 2]
        release.wait(timeout=120)
        yield data[len(data) // 2 :] + f"\r\n--{_BOUNDARY}--\r\n".encode()

    content_type = f"multipart/form-data; boundary={_BOUNDARY}"
    return http.post("/v1/files", content=body(), headers={"Content-Type": content_type})  # type: ignore[arg-type]


def test_an_organisation_validates_two_uploads_at_once_and_another_is_not_held_up(
    http: httpx.Client, client: openai.OpenAI, other_client: openai.OpenAI, settings: Settings
) -> None:
    release, slots = threading.Event(), validation_slots(settings)
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(_held_upload, http, release) for _ in range(2)]
        try:
            eventually(lambda: slots.in_use() == 2, what="both held uploads being validated")
            with pytest.raises(openai.RateLimitError, match="already has 2 uploads being validated"):
                client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune")
            assert other_client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").status == "processed"
        finally:
            release.set()
        assert [answer.result().status_code for answer in held] == [200, 200]
    assert slots.in_use() == 0
    assert client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").status == "processed"
