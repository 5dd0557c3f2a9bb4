"""Schemathesis against the service's own OpenAPI schema: for every route, generated requests (valid and invalid
bodies, queries, paths and headers) never get a 500, and every error answers in OpenAI's error shape, which the SDK
reads. Bodies that are not JSON at all (text, forms, garbage bytes, a wrong charset) go to every route that takes
JSON, and prompts of megabytes and long stop sequences to chat and completions, with the same expectation.

The server under fuzzing generates at most a few tokens, so generated `max_tokens` cannot make a run slow."""

import re
from collections.abc import Iterator

import httpx
import hypothesis
import pytest
import requests
import schemathesis

from app.api.main import create_app
from app.core.settings import Settings
from tests.helpers.services import serving
from tests.helpers.tiny_models import TINY_MODEL_ID

EXAMPLES_PER_ROUTE = 25
ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def fuzzed_server(settings: Settings) -> Iterator[str]:
    with serving(create_app(settings.model_copy(update={"max_new_tokens_limit": 4}))) as url:
        yield url


def _openapi_schema() -> dict:
    """The app's schema, built at collection so each route becomes its own test; it needs no running service."""
    unused = {
        "database_url": "postgresql+psycopg://unused/",
        "redis_url": "redis://unused",
        "s3_endpoint_url": "http://unused",
    }
    return create_app(Settings(**unused)).openapi()


schema = schemathesis.openapi.from_dict(_openapi_schema())


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES_PER_ROUTE, deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck)
)
def test_no_request_gets_a_500_and_every_error_has_openai_s_shape(
    case: schemathesis.Case, fuzzed_server: str, admin_key: str
) -> None:
    # An admin key, so that the key-management routes are fuzzed past their 403.
    response: requests.Response = case.call(
        base_url=fuzzed_server, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60
    )

    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
    if response.status_code >= 400:
        error = response.json().get("error")
        assert isinstance(error, dict) and set(error) >= ERROR_FIELDS, response.text
        assert isinstance(error["message"], str) and error["message"], response.text


def _json_routes() -> list[tuple[str, str]]:
    """(method, path) of every route that takes a JSON body, path parameters filled with ids that do not exist."""
    routes = []
    for path, operations in _openapi_schema()["paths"].items():
        for method, operation in operations.items():
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                routes.append((method.upper(), re.sub(r"\{[^}]+\}", "none", path)))
    return routes


# What a confused or hostile client sends where JSON is expected: every one is a 4xx in OpenAI's shape.
NOT_JSON = {
    "text": ("text/plain", b"Hello, this is not JSON."),
    "form": ("application/x-www-form-urlencoded", b"model=m&messages=hello&stop=x"),
    "garbage": ("application/octet-stream", bytes(range(256)) * 64),
    "garbage-as-json": ("application/json", b"\xff\xfe\x00\x81{garbage" + bytes(range(256))),
    "wrong-charset": ("application/json; charset=latin-1", '{"model": "café", "input": "é"}'.encode("latin-1")),
    "utf-16-declared-utf-8": ("application/json; charset=utf-8", '[{"model": "m"}]'.encode("utf-16-le")),
    "truncated": ("application/json", b'{"model": "m", "messages": [{"role": '),
    "multipart": (
        "multipart/form-data; boundary=b",
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--b--\r\n',
    ),
    "no-content-type": (None, b'{"model": "m"}'),
    "empty": ("application/json", b""),
}


def _assert_openai_error(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, response.text
    error = response.json().get("error")
    assert isinstance(error, dict) and set(error) >= ERROR_FIELDS, response.text
    assert isinstance(error["message"], str) and error["message"], response.text


@pytest.mark.parametrize("kind", NOT_JSON)
def test_a_body_that_is_not_json_gets_a_4xx_in_openai_s_shape_on_every_json_route(
    fuzzed_server: str, admin_key: str, kind: str
) -> None:
    content_type, body = NOT_JSON[kind]
    headers = {"Authorization": f"Bearer {admin_key}"} | ({"Content-Type": content_type} if content_type else {})

    with httpx.Client(base_url=fuzzed_server, headers=headers, timeout=60) as http:
        for method, path in _json_routes():
            response = http.request(method, path, content=body)
            assert response.status_code < 500, f"{method} {path}: {response.status_code} {response.text}"
            _assert_openai_error(response)


def test_huge_prompts_and_long_stop_sequences_get_a_4xx_in_openai_s_shape(fuzzed_server: str, admin_key: str) -> None:
    huge = "lorem ipsum " * 150_000  # 1.8 MB: under the body ceiling, far over the context
    chat = {"model": TINY_MODEL_ID, "messages": [{"role": "user", "content": "hi"}]}
    completion = {"model": TINY_MODEL_ID, "prompt": "hi"}
    sent = [
        ("/v1/chat/completions", chat | {"messages": [{"role": "user", "content": huge}]}),
        ("/v1/chat/completions", chat | {"messages": [{"role": "user", "content": huge * 2}]}),  # over the ceiling
        ("/v1/chat/completions", chat | {"messages": [{"role": "user", "content": "hi"}] * 10_000}),
        ("/v1/chat/completions", chat | {"stop": "x" * 100_000}),
        ("/v1/chat/completions", chat | {"stop": ["x" * 300] * 4}),
        ("/v1/chat/completions", chat | {"stop": [""] * 1000}),
        ("/v1/completions", completion | {"prompt": huge}),
        ("/v1/completions", completion | {"prompt": [huge[:100_000]] * 8}),
        ("/v1/completions", completion | {"stop": "x" * 100_000}),
        ("/v1/completions", completion | {"prompt": "hi " * 1000, "max_tokens": 4}),
    ]

    with httpx.Client(base_url=fuzzed_server, headers={"Authorization": f"Bearer {admin_key}"}, timeout=120) as http:
        for number, (path, body) in enumerate(sent):
            response = http.post(path, json=body)
            assert response.status_code < 500, (number, response.status_code, response.text[:500])
            _assert_openai_error(response)
