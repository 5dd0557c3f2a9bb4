"""Limits on what one client can make the service do: requests per key per minute (429 with Retry-After, the SDK's
RateLimitError, which it retries after that wait; other keys go on; Redis down lets requests through), the size of
a JSON body (413), and file names, which never reach storage keys."""

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from app.config import Settings
from app.db import transaction
from app.main import create_app
from app.orgs.rate_limit import WINDOW_SECONDS, RateLimiter
from app.tables import StoredFile
from tests.conftest import new_org_key, sdk_client, serving
from tests.datasets import chat_jsonl

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
