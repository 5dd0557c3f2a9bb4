"""Limits per organisation: active jobs, active evaluations, stored bytes and open uploads, each a 429
`quota_exceeded` naming its setting, freed by finishing, cancelling or deleting; concurrent creates cannot both take
the last slot; and requests per minute counted for the organisation across all its keys."""

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from app.api.main import create_app
from app.api.orgs.rate_limit import WINDOW_SECONDS
from app.core.settings import Settings
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.services import new_org_key, sdk_client, serving

DATASET = chat_jsonl()
LIMITS = {
    "max_active_jobs_per_organization": 2,
    "max_active_evaluations_per_organization": 1,
    "max_stored_bytes_per_organization": len(DATASET) * 3 // 2,  # one dataset fits, two do not
    "max_open_uploads_per_organization": 1,
}
ORG_RPM = 5


@pytest.fixture(scope="module")
def limited_url(settings: Settings) -> Iterator[str]:
    with serving(create_app(settings.model_copy(update=LIMITS))) as url:
        yield url


@pytest.fixture
def limited(limited_url: str, settings: Settings) -> openai.OpenAI:
    """A client of a fresh organisation on the API with small limits."""
    return sdk_client(limited_url, new_org_key(settings, f"quota-{uuid.uuid4().hex[:8]}"))


def _refusal(raised: pytest.ExceptionInfo[openai.RateLimitError], setting: str) -> str:
    assert raised.value.status_code == 429 and raised.value.code == "quota_exceeded"
    message: str = raised.value.body["message"]  # type: ignore[index]
    assert f"LORAPORT_{setting.upper()}" in message
    return message


def _job(client: openai.OpenAI, settings: Settings, file_id: str) -> str:
    return client.fine_tuning.jobs.create(model=settings.default_base_model, training_file=file_id).id


def test_a_job_past_the_active_jobs_limit_is_refused_until_one_is_cancelled(
    limited: openai.OpenAI, settings: Settings
) -> None:
    file_id = limited.files.create(file=("t.jsonl", DATASET), purpose="fine-tune").id
    first, _ = _job(limited, settings, file_id), _job(limited, settings, file_id)

    with pytest.raises(openai.RateLimitError) as raised:
        _job(limited, settings, file_id)
    message = _refusal(raised, "max_active_jobs_per_organization")
    assert message.startswith("Your organization has 2 active fine-tuning jobs") and "cancel one" in message

    limited.fine_tuning.jobs.cancel(first)
    assert limited.fine_tuning.jobs.retrieve(_job(limited, settings, file_id)).status == "queued"


def test_concurrent_creates_cannot_both_take_the_last_slot(limited: openai.OpenAI, settings: Settings) -> None:
    file_id = limited.files.create(file=("t.jsonl", DATASET), purpose="fine-tune").id
    _job(limited, settings, file_id)  # one slot left

    def create() -> int:
        try:
            _job(limited, settings, file_id)
            return 200
        except openai.RateLimitError:
            return 429

    with ThreadPoolExecutor(4) as pool:
        answers = sorted(pool.map(lambda _: create(), range(4)))

    assert answers == [200, 429, 429, 429]
    active = [job for job in limited.fine_tuning.jobs.list() if job.status in ("queued", "running")]
    assert len(active) == LIMITS["max_active_jobs_per_organization"]


def test_the_limits_are_per_organisation(limited: openai.OpenAI, limited_url: str, settings: Settings) -> None:
    file_id = limited.files.create(file=("t.jsonl", DATASET), purpose="fine-tune").id
    for _ in range(2):
        _job(limited, settings, file_id)
    other = sdk_client(limited_url, new_org_key(settings, f"quota-other-{uuid.uuid4().hex[:8]}"))
    other_file = other.files.create(file=("t.jsonl", DATASET), purpose="fine-tune").id
    assert _job(other, settings, other_file)


def test_an_evaluation_past_the_limit_is_refused_until_one_is_cancelled(
    limited: openai.OpenAI, settings: Settings
) -> None:
    file_id = limited.files.create(file=("t.jsonl", DATASET), purpose="fine-tune").id
    body = {"model": settings.default_base_model, "file": file_id}
    first: dict = limited.post("/evaluations", body=body, cast_to=object)  # type: ignore[assignment]

    with pytest.raises(openai.RateLimitError) as raised:
        limited.post("/evaluations", body=body, cast_to=object)
    _refusal(raised, "max_active_evaluations_per_organization")

    limited.post(f"/evaluations/{first['id']}/cancel", cast_to=object)
    assert limited.post("/evaluations", body=body, cast_to=object)


def test_a_file_past_the_stored_bytes_limit_is_refused_and_nothing_is_kept(limited: openai.OpenAI) -> None:
    kept = limited.files.create(file=("t.jsonl", DATASET), purpose="fine-tune")

    with pytest.raises(openai.RateLimitError) as raised:
        limited.files.create(file=("again.jsonl", DATASET), purpose="fine-tune")
    assert "delete files" in _refusal(raised, "max_stored_bytes_per_organization")
    with pytest.raises(openai.RateLimitError):  # larger than the whole room: stopped as it streams
        limited.files.create(file=("big.jsonl", chat_jsonl(TICKETS * 20)), purpose="fine-tune")
    assert [file.id for file in limited.files.list()] == [kept.id]

    limited.files.delete(kept.id)
    assert limited.files.create(file=("again.jsonl", DATASET), purpose="fine-tune").status == "processed"


def test_open_uploads_and_their_declared_bytes_count(limited: openai.OpenAI) -> None:
    room = LIMITS["max_stored_bytes_per_organization"]
    create = {"filename": "t.jsonl", "mime_type": "application/jsonl", "purpose": "fine-tune"}
    with pytest.raises(openai.RateLimitError) as raised:
        limited.uploads.create(bytes=room + 1, **create)  # type: ignore[arg-type]
    _refusal(raised, "max_stored_bytes_per_organization")

    first = limited.uploads.create(bytes=len(DATASET), **create)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as raised:
        limited.uploads.create(bytes=10, **create)  # type: ignore[arg-type]
    _refusal(raised, "max_open_uploads_per_organization")
    with pytest.raises(openai.RateLimitError):  # the open upload's bytes are reserved
        limited.files.create(file=("t.jsonl", DATASET), purpose="fine-tune")

    limited.uploads.cancel(first.id)
    assert limited.uploads.create(bytes=10, **create).status == "pending"  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def org_limited_url(settings: Settings) -> Iterator[str]:
    update = {"rate_limit_per_minute": 100, "rate_limit_per_minute_per_organization": ORG_RPM}
    with serving(create_app(settings.model_copy(update=update))) as url:
        yield url


def test_two_keys_of_one_organisation_share_its_request_budget(org_limited_url: str, settings: Settings) -> None:
    if time.time() % WINDOW_SECONDS > WINDOW_SECONDS - 5:  # all requests of the test in one counting window
        time.sleep(WINDOW_SECONDS - time.time() % WINDOW_SECONDS)
    org = f"rate-org-{uuid.uuid4().hex[:8]}"
    first, second = (sdk_client(org_limited_url, new_org_key(settings, org)) for _ in range(2))
    other = sdk_client(org_limited_url, new_org_key(settings, f"rate-else-{uuid.uuid4().hex[:8]}"))

    for _ in range(3):
        first.models.list()
    for _ in range(ORG_RPM - 3):
        second.models.list()
    with pytest.raises(openai.RateLimitError) as refused:
        second.models.list()

    assert 1 <= int(refused.value.response.headers["retry-after"]) <= WINDOW_SECONDS
    assert f"Limit {ORG_RPM}" in refused.value.message
    assert "LORAPORT_RATE_LIMIT_PER_MINUTE_PER_ORGANIZATION" in refused.value.message
    assert other.models.list().data  # another organisation goes on
