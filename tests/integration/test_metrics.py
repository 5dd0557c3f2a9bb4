"""Prometheus metrics as an operator scrapes them: on their own port, never on the public one; requests by route
template and status; refusals; generation, uploads and the jobs' queue read from PostgreSQL."""

import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.api.main import create_app
from app.api.orgs.rate_limit import WINDOW_SECONDS
from app.cli.embedded.process import free_ports
from app.core.settings import Settings
from app.serving.replica import create_replica_app
from tests.helpers.datasets import chat_jsonl
from tests.helpers.services import new_org_key, sdk_client, serving
from tests.helpers.tiny_models import TINY_MODEL_ID

RATE_LIMIT = 4


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the endpoint, by name and labels."""
    text = httpx.get(f"{url}/metrics", timeout=30).raise_for_status().text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def metrics_server(settings: Settings) -> Iterator[tuple[str, str]]:
    """The API with a rate limit, and its metrics on a port of their own: (public URL, metrics URL)."""
    port = free_ports(1)[0]
    configured = settings.model_copy(update={"metrics_port": port, "rate_limit_per_minute": RATE_LIMIT})
    with serving(create_app(configured)) as url:
        yield url, f"http://127.0.0.1:{port}"


def test_metrics_are_served_on_their_own_port_and_the_public_one_answers_404(
    metrics_server: tuple[str, str],
) -> None:
    public, metrics = metrics_server
    assert httpx.get(f"{public}/metrics").status_code == 404
    samples = scrape(metrics)
    assert any(name.startswith("loraport_") for name, _ in samples)


def test_requests_are_counted_by_route_template_and_status(metrics_server: tuple[str, str], settings: Settings) -> None:
    public, metrics = metrics_server
    client = sdk_client(public, new_org_key(settings, "metrics-chat"))
    route = "/v1/fine_tuning/jobs/{job_id}"
    before = scrape(metrics)

    for _ in range(2):
        client.chat.completions.create(model=TINY_MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-does-not-exist")

    after = scrape(metrics)
    count = "loraport_http_request_duration_seconds_count"
    chat = {"method": "POST", "route": "/v1/chat/completions", "status": "200"}
    assert value(after, count, **chat) - value(before, count, **chat) == 2
    missing = {"method": "GET", "route": route, "status": "404"}
    assert value(after, count, **missing) - value(before, count, **missing) == 1
    assert not any("ftjob-does-not-exist" in str(labels) for _, labels in after)  # never the raw path
    # generation: a first token for each, at least one decode step, tokens counted
    ttft = "loraport_generation_time_to_first_token_seconds_count"
    assert value(after, ttft) - value(before, ttft) >= 2
    assert value(after, "loraport_decode_step_rows_count") > value(before, "loraport_decode_step_rows_count")
    assert value(after, "loraport_generated_tokens_total") - value(before, "loraport_generated_tokens_total") >= 2


def test_refusals_by_rate_limit_and_by_size_are_counted(metrics_server: tuple[str, str], settings: Settings) -> None:
    public, metrics = metrics_server
    if time.time() % WINDOW_SECONDS > WINDOW_SECONDS - 5:  # all requests of the test in one counting window
        time.sleep(WINDOW_SECONDS - time.time() % WINDOW_SECONDS)
    key = new_org_key(settings, "metrics-refused")
    client = sdk_client(public, key)
    refused = "loraport_requests_refused_total"
    before = scrape(metrics)

    for _ in range(RATE_LIMIT):
        client.models.list()
    with pytest.raises(openai.RateLimitError):
        client.models.list()
    oversized = httpx.post(
        f"{public}/v1/chat/completions",
        content=b"x" * (settings.max_json_body_bytes + 1),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )

    assert oversized.status_code == 413
    after = scrape(metrics)
    assert value(after, refused, reason="rate_limit") - value(before, refused, reason="rate_limit") == 1
    assert value(after, refused, reason="limit") - value(before, refused, reason="limit") == 1
    too_large = {"method": "POST", "route": "/v1/chat/completions", "status": "413"}
    count = "loraport_http_request_duration_seconds_count"
    assert value(after, count, **too_large) - value(before, count, **too_large) == 1


def test_uploaded_bytes_and_queued_jobs_per_organisation_are_shown(
    metrics_server: tuple[str, str], settings: Settings
) -> None:
    public, metrics = metrics_server
    client = sdk_client(public, new_org_key(settings, "metrics-jobs"))
    content = chat_jsonl()
    before = scrape(metrics)

    uploaded = client.files.create(file=("train.jsonl", content), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=uploaded.id)

    after = scrape(metrics)
    uploaded_bytes = value(after, "loraport_upload_bytes_total", kind="file")
    assert uploaded_bytes - value(before, "loraport_upload_bytes_total", kind="file") >= len(content)
    organization = _organization_of(settings, job.id)
    queued = {"kind": "job", "organization": organization}
    assert value(after, "loraport_queue_depth", **queued) == 1
    assert value(after, "loraport_queue_oldest_age_seconds", **queued) >= 0
    assert value(after, "loraport_jobs", status="queued") >= 1
    assert value(after, "loraport_work_metrics_up") == 1


def _organization_of(settings: Settings, job_id: str) -> str:
    from app.core.db import transaction
    from app.core.tables import FineTuningJob

    with transaction(settings.require("database_url")) as session:
        job = session.get(FineTuningJob, job_id)
        assert job is not None
        return job.organization_id


def test_an_inference_replica_serves_its_metrics_on_their_own_port(settings: Settings) -> None:
    port = free_ports(1)[0]
    with serving(create_replica_app(settings.model_copy(update={"metrics_port": port}))) as url:
        assert httpx.get(f"{url}/metrics").status_code == 404
        samples = scrape(f"http://127.0.0.1:{port}")
    assert ("loraport_generated_tokens_total", frozenset()) in samples
