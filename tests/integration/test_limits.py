"""Limits on what one client can make the service do: requests per key per minute (429 with Retry-After, the SDK's
RateLimitError, which it retries after that wait; other keys go on; Redis down lets requests through), the size of
a JSON body (413), how deeply JSON nests, in a body (400 `json_too_deep`) or a dataset line (`too_deeply_nested`),
and file names, which never reach storage keys."""

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.files.form_stream import MAX_FORM_BYTES
from app.api.main import create_app
from app.api.orgs.rate_limit import WINDOW_SECONDS, RateLimiter
from app.core.db import transaction
from app.core.settings import Settings
from app.core.tables import StoredFile
from tests.helpers.datasets import chat_jsonl
from tests.helpers.services import new_org_key, sdk_client, serving

LIMIT = 5


@pytest.fixture(scope="module")
def limited_server(settings: Settings) -> Iterator[str]:
    with serving(create_app(settings.model_copy(update={"rate_limit_per_minute": LIMIT}))) as url:
        yield url


def test_a_key_past_its_limit_gets_429_with_retry_after_and_other_keys_go_on(
    limited_server: str, settings: Settings
) -> None:
    if time.time() % WINDOW_SECONDS > WINDOW_SECONDS - 5:  # all requests of the test in one counting window
        time.sleep(WINDOW_SECONDS - time.time() % WINDOW_SECONDS)
    busy = sdk_client(limited_server, new_org_key(settings, "rate-busy"))
    other = sdk_client(limited_server, new_org_key(settings, "rate-other"))

    for _ in range(LIMIT):
        busy.models.list()
    with pytest.raises(openai.RateLimitError) as refused:
        busy.models.list()

    retry_after = int(refused.value.response.headers["retry-after"])
    assert 1 <= retry_after <= WINDOW_SECONDS
    assert refused.value.code == "rate_limit_exceeded" and f"Limit {LIMIT}" in refused.value.message
    assert other.models.list().data  # the limit is per key


def test_redis_down_lets_requests_through() -> None:
    limiter = RateLimiter("redis://127.0.0.1:1/0", per_minute=1)
    limiter.charge("digest")
    limiter.charge("digest")  # over the limit, but nothing counts: no refusal


def _chat_body(size: int) -> bytes:
    return json.dumps(
        {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "x" * size}]}
    ).encode()


def test_a_json_body_over_the_ceiling_is_413_whether_or_not_it_says_its_length(
    api_base_url: str, org_key: str, settings: Settings
) -> None:
    oversized = _chat_body(settings.max_json_body_bytes + 1)
    headers = {"Authorization": f"Bearer {org_key}", "Content-Type": "application/json"}

    declared = httpx.post(f"{api_base_url}/v1/chat/completions", content=oversized, headers=headers, timeout=60)
    chunked = httpx.post(
        f"{api_base_url}/v1/chat/completions",
        content=(oversized[i : i + 65536] for i in range(0, len(oversized), 65536)),  # no Content-Length
        headers=headers,
        timeout=60,
    )

    for answer in (declared, chunked):
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"]["code"] == "request_too_large"


class BodyMeter:
    """The app, counting the body bytes it reads of each request: what the server pulled off the socket."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.read: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.read.append(0)
        index = len(self.read) - 1

        async def counted() -> Message:
            message = await receive()
            self.read[index] += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


@pytest.fixture(scope="module")
def metered(settings: Settings) -> Iterator[tuple[str, BodyMeter]]:
    meter = BodyMeter(create_app(settings))
    with serving(meter) as url:
        yield url, meter


class Zeros:
    """A request body of `size` zero bytes, made as it is sent, counting how much of it the client had to send."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        chunk = bytes(65536)
        while self.pulled < self.size:
            self.pulled += len(chunk)
            yield chunk


HUGE = 64 * 1024**2


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
def test_an_unauthenticated_huge_text_body_is_refused_after_reading_at_most_the_ceiling(
    metered: tuple[str, BodyMeter], settings: Settings, declared: bool
) -> None:
    url, meter = metered
    body = Zeros(HUGE)
    headers = {"Content-Type": "text/plain"} | ({"Content-Length": str(HUGE)} if declared else {})

    answer = httpx.post(f"{url}/v1/chat/completions", content=iter(body), headers=headers, timeout=60)

    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "request_too_large"
    ceiling = settings.max_json_body_bytes
    # The server reads the ceiling and the network chunk that crossed it (uvicorn hands on up to 64 KiB and what one
    # socket read brings on top), or nothing when the declared length is over it.
    assert meter.read[-1] == 0 if declared else ceiling < meter.read[-1] <= ceiling + 2**20
    # What the client sent beyond the server's reads sat in socket buffers; it never had to send it all.
    assert body.pulled < HUGE / 2


def test_a_non_multipart_body_to_an_upload_route_is_bounded_too(
    metered: tuple[str, BodyMeter], settings: Settings, org_key: str
) -> None:
    url, meter = metered
    headers = {"Authorization": f"Bearer {org_key}", "Content-Type": "application/octet-stream"}

    answer = httpx.post(f"{url}/v1/files", content=iter(Zeros(HUGE)), headers=headers, timeout=60)

    assert answer.status_code == 413, answer.text
    assert meter.read[-1] <= settings.max_json_body_bytes + 2**20


def test_a_multipart_upload_past_the_body_ceiling_streams_to_its_route(settings: Settings, org_key: str) -> None:
    data = chat_jsonl() * 20
    headers = {"Authorization": f"Bearer {org_key}"}

    with TestClient(create_app(settings.model_copy(update={"max_json_body_bytes": 150})), headers=headers) as api:
        upload = api.post(
            "/v1/uploads",
            json={"filename": "t.jsonl", "purpose": "fine-tune", "bytes": len(data), "mime_type": "text/plain"},
        )
        part = api.post(f"/v1/uploads/{upload.json()['id']}/parts", files={"data": ("part", data)})
        login = api.post("/login", data={"api_key": "x" * 200})
        api.post(f"/v1/uploads/{upload.json()['id']}/cancel")

    assert upload.status_code == 200 and part.status_code == 200, part.text
    assert login.status_code == 413, login.text  # a form that is not an upload is bounded like any body


JSON = {"Content-Type": "application/json"}


def _nested(depth: int) -> bytes:
    """A JSON value `depth` arrays and objects deep."""
    return b'{"a": [' * (depth // 2) + (b"[1]" if depth % 2 else b"1") + b"]}" * (depth // 2)


def test_json_nested_past_the_limit_is_400_json_too_deep_however_it_is_sent(
    http: httpx.Client, settings: Settings
) -> None:
    limit = settings.max_json_depth
    objects = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    too_deep = [
        b"[" * 100_000 + b"]" * 100_000,
        objects,
        b'{"model": "m", "messages": [{"role": "user", "content": %s}]}' % _nested(10_000),
        _nested(limit + 1),
        rb'{"s": "\\\"[{", "t": ' + _nested(limit) + b"}",  # an escaped backslash and quote, then brackets
    ]
    sent = [(route, body) for route in ("/v1/chat/completions", "/v1/fine_tuning/jobs") for body in too_deep]
    chunked = (objects[i : i + 65536] for i in range(0, len(objects), 65536))  # no Content-Length
    # In UTF-16, "∀" holds the byte of a quote: only a count over the decoded text sees where strings end.
    utf16 = ('{"t": "∀", "u": ' + "[" * 100_000 + "]" * 100_000 + "}").encode("utf-16")
    sent += [("/v1/chat/completions", chunked), ("/v1/chat/completions", utf16)]

    for number, (route, body) in enumerate(sent):
        answer = http.post(route, content=body, headers=JSON)
        assert answer.status_code == 400, (number, answer.text)
        assert answer.json()["error"]["code"] == "json_too_deep", (number, answer.text)
        assert f"nested more than {limit} levels" in answer.json()["error"]["message"]


def test_json_nested_as_deep_as_the_limit_reaches_the_route(http: httpx.Client, settings: Settings) -> None:
    # More brackets in all than the limit, so the count is walked, not only totalled.
    fields = b'{"model": "m", "training_file": "file-none", "hyperparameters": {}, "metadata": '
    body = fields + _nested(settings.max_json_depth - 1) + b"}"

    answer = http.post("/v1/fine_tuning/jobs", content=body, headers=JSON)

    assert answer.status_code == 400 and answer.json()["error"]["param"].startswith("metadata"), answer.text


def test_the_depth_limit_is_the_deployment_s_setting(settings: Settings, org_key: str) -> None:
    deep_line = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "m": '
    data = chat_jsonl() + deep_line + _nested(8) + b"}\n"  # 9 deep with the line's own object
    headers = {"Authorization": f"Bearer {org_key}"}

    with TestClient(create_app(settings.model_copy(update={"max_json_depth": 8})), headers=headers) as api:
        body = api.post("/v1/chat/completions", content=b'{"model": "m", "x": %s}' % _nested(8), headers=JSON)
        line = api.post("/v1/files", files={"file": ("deep.jsonl", data)}, data={"purpose": "fine-tune"})

    assert body.status_code == 400 and "nested more than 8 levels" in body.json()["error"]["message"]
    assert line.status_code == 400 and line.json()["error"]["validation"]["errors"][0]["code"] == "too_deeply_nested"


def test_a_json_content_type_in_capitals_is_bounded_too(http: httpx.Client, settings: Settings) -> None:
    content = b"x" * settings.max_json_body_bytes  # an unknown model: were it read, the answer would be a quick 404
    oversized = b'{"model": "none", "messages": [{"role": "user", "content": "%s"}]}' % content

    answer = http.post("/v1/chat/completions", content=oversized, headers={"Content-Type": "Application/JSON"})

    assert answer.status_code == 413, answer.text


def test_a_multipart_upload_whose_boundary_holds_json_is_not_a_json_body(settings: Settings, org_key: str) -> None:
    boundary = "form-json-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
        ).encode()
        + chat_jsonl()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Authorization": f"Bearer {org_key}", "Content-Type": f"multipart/form-data; boundary={boundary}"}

    with TestClient(create_app(settings.model_copy(update={"max_json_body_bytes": 100}))) as api:
        answer = api.post("/v1/files", content=body, headers=headers)

    assert answer.status_code == 200, answer.text


def test_an_upload_with_hundreds_of_large_form_fields_is_refused_naming_the_limit(
    http: httpx.Client, settings: Settings
) -> None:
    padding = {f"field{i}": "x" * 60_000 for i in range(300)}  # the audit's 18 MB of fields, once all kept

    direct = http.post("/v1/files", files={"file": ("t.jsonl", chat_jsonl())}, data={"purpose": "fine-tune", **padding})
    upload = http.post(
        "/v1/uploads",
        json={"filename": "t.jsonl", "purpose": "fine-tune", "bytes": len(chat_jsonl()), "mime_type": "text/plain"},
    ).json()
    part = http.post(f"/v1/uploads/{upload['id']}/parts", files={"data": ("part", chat_jsonl())}, data=padding)
    http.post(f"/v1/uploads/{upload['id']}/cancel")

    for answer in (direct, part):
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"]["code"] == "form_too_large"
        assert f"larger than {MAX_FORM_BYTES} bytes" in answer.json()["error"]["message"]
    assert http.get("/v1/files").json()["data"] == []


def test_a_dataset_line_nested_past_the_limit_is_refused_by_line_on_both_upload_paths(http: httpx.Client) -> None:
    deep = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": '
    data = chat_jsonl() + deep + b"[" * 100_000 + b"]" * 100_000 + b"}]}\n"
    expected = [{"line": 13, "code": "too_deeply_nested", "message": "Line 13 nests JSON deeper than 64 levels."}]

    direct = http.post("/v1/files", files={"file": ("deep.jsonl", data)}, data={"purpose": "fine-tune"})
    upload = http.post(
        "/v1/uploads",
        json={"filename": "deep.jsonl", "purpose": "fine-tune", "bytes": len(data), "mime_type": "text/plain"},
    ).json()
    part = http.post(f"/v1/uploads/{upload['id']}/parts", files={"data": ("part", data)}).json()
    completed = http.post(f"/v1/uploads/{upload['id']}/complete", json={"part_ids": [part["id"]]})
    http.post(f"/v1/uploads/{upload['id']}/cancel")  # its part would stay until the upload expires

    for answer in (direct, completed):
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["validation"]["errors"] == expected
    assert http.get("/v1/files").json()["data"] == []


def test_a_file_name_never_reaches_storage_keys_and_odd_bytes_are_kept_out(
    client: openai.OpenAI, settings: Settings
) -> None:
    hostile = "../../../etc/passwd\x00\r\n.jsonl"
    uploaded = client.files.create(file=(hostile, chat_jsonl()), purpose="fine-tune")

    with transaction(settings.require("database_url")) as session:
        stored = session.get_one(StoredFile, uploaded.id)
        key, name = stored.storage_key, stored.filename
    assert key == f"orgs/{stored.organization_id}/files/{uploaded.id}.jsonl"
    assert "\x00" not in name and "\r" not in name and "\n" not in name and "/" not in name
    assert client.files.content(uploaded.id).content == chat_jsonl()


def test_max_tokens_over_the_ceiling_is_refused_naming_the_field(client: openai.OpenAI, settings: Settings) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=settings.default_base_model,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=settings.max_new_tokens_limit + 1,
        )
    assert refused.value.param == "max_tokens" and str(settings.max_new_tokens_limit) in refused.value.message
