"""Schemathesis against the service's own OpenAPI schema: for every route, generated requests (valid and invalid
bodies, queries, paths and headers) never get a 500, and every error answers in OpenAI's error shape, which the SDK
reads.

The server under fuzzing generates at most a few tokens, so generated `max_tokens` cannot make a run slow."""

from collections.abc import Iterator

import hypothesis
import pytest
import requests
import schemathesis

from app.api.main import create_app
from app.core.settings import Settings
from tests.helpers.services import serving

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
