"""/v1/organization/usage/…: what an organisation used, per UTC day, as OpenAI's usage API pages it, read with the
openai SDK's `admin.organization.usage` and an admin key; another organisation's usage is never in it."""

import json
import re
import time
import uuid
from datetime import UTC, datetime

import httpx
import openai
import pytest
from rich.console import Console
from typer.testing import CliRunner

from app.cli import usage as usage_cli
from app.cli.main import app as cli
from app.core.settings import Settings
from tests.helpers.datasets import chat_jsonl
from tests.helpers.services import new_org_key
from tests.helpers.waiting import eventually

DAY = 86_400
CHAT = [{"role": "user", "content": "Name three colours."}]


def today() -> int:
    now = datetime.now(UTC)
    return int(datetime(now.year, now.month, now.day, tzinfo=UTC).timestamp())


def admin_sdk(api_base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api_base_url}/v1", api_key=key, admin_api_key=key, max_retries=0, timeout=120)


@pytest.fixture
def admin(settings: Settings, api_base_url: str) -> openai.OpenAI:
    return admin_sdk(api_base_url, new_org_key(settings, f"usage-{uuid.uuid4().hex[:10]}", admin=True))


def todays_results(client: openai.OpenAI, **options: object) -> list:
    page = client.admin.organization.usage.completions(start_time=today(), **options)  # type: ignore[arg-type]
    return page.data[0].results


def extension(client: openai.OpenAI, kind: str, **params: object) -> dict:
    return client.get(f"/organization/usage/{kind}", cast_to=object, options={"params": params})  # type: ignore[return-value]


def test_completions_usage_counts_every_request_s_tokens_by_model(
    admin: openai.OpenAI, settings: Settings, api_base_url: str
) -> None:
    base = settings.default_base_model
    whole = admin.chat.completions.create(model=base, messages=CHAT, max_tokens=4, temperature=0)
    streamed = list(
        admin.chat.completions.create(
            model=base, messages=CHAT, max_tokens=5, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )[-1].usage
    texts = admin.completions.create(model=base, prompt=["Red, green and", "One, two,"], max_tokens=3, n=2)
    replies = [whole.usage, streamed, texts.usage]
    other = admin_sdk(api_base_url, new_org_key(settings, f"usage-other-{uuid.uuid4().hex[:10]}", admin=True))

    results = eventually(lambda: [r for r in todays_results(admin, group_by=["model"]) if r.num_model_requests == 3])

    assert [result.model for result in results] == [base]
    assert results[0].input_tokens == sum(reply.prompt_tokens for reply in replies)
    assert results[0].output_tokens == sum(reply.completion_tokens for reply in replies) == 4 + 5 + 4 * 3
    assert todays_results(admin)[0].model is None  # not grouped: one result for the day
    assert todays_results(other) == []


def test_usage_pages_day_buckets_from_start_to_end(admin: openai.OpenAI) -> None:
    start = today() - 9 * DAY
    usage = admin.admin.organization.usage
    first = usage.completions(start_time=start + 3600, limit=7)
    rest = usage.completions(start_time=start + 3600, limit=7, page=first.next_page)

    assert [bucket.start_time for bucket in first.data] == [start + i * DAY for i in range(7)]
    assert first.has_more and not rest.has_more and rest.next_page is None
    assert [bucket.start_time for bucket in rest.data] == [start + i * DAY for i in range(7, 10)]
    assert all(bucket.end_time == bucket.start_time + DAY and bucket.results == [] for bucket in first.data + rest.data)


def test_stored_bytes_follow_the_organisation_s_files(admin: openai.OpenAI) -> None:
    content = chat_jsonl()
    kept = admin.files.create(file=("kept.jsonl", content), purpose="fine-tune")
    gone = admin.files.create(file=("gone.jsonl", content + content), purpose="fine-tune")
    admin.files.delete(gone.id)

    bucket = extension(admin, "storage", start_time=today())["data"][0]

    assert bucket["results"] == [{"object": "organization.usage.storage.result", "usage_bytes": kept.bytes}]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"bucket_width": "1h"}, "bucket_width"),
        ({"limit": 32}, "limit"),
        ({"group_by": "project_id"}, "group_by"),
        ({"page": "somewhere"}, "page"),
        ({"end_time": 5}, "start_time"),
    ],
)
def test_a_query_it_cannot_answer_is_a_400_naming_the_parameter(admin: openai.OpenAI, params: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        extension(admin, "completions", start_time=today(), **params)

    assert refused.value.body["param"] == param  # type: ignore[index]


def test_only_admin_keys_read_usage(client: openai.OpenAI) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        extension(client, "completions", start_time=today())
    with pytest.raises(openai.PermissionDeniedError):
        extension(client, "fine_tuning", start_time=today())


def test_end_time_defaults_to_now(admin: openai.OpenAI) -> None:
    page = extension(admin, "fine_tuning", start_time=int(time.time()) - DAY)

    assert [bucket["start_time"] for bucket in page["data"]] == [today() - DAY, today()]


def test_the_cli_shows_each_day_s_usage(
    admin: openai.OpenAI, settings: Settings, api_base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_cli, "out", Console(width=80))  # a terminal of 80 columns: no date cut short
    file = admin.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune")
    remote = ["--base-url", api_base_url, "--api-key", admin.api_key]
    shown = CliRunner().invoke(cli, ["usage", "--days", "40", *remote])
    as_json = CliRunner().invoke(cli, ["usage", "--days", "2", "--json", *remote])

    assert shown.exit_code == 0, shown.output
    today_row = next(line for line in shown.stdout.splitlines() if time.strftime("%Y-%m-%d", time.gmtime()) in line)
    assert f"{file.bytes:,}" in today_row
    assert len(set(re.findall(r"\d{4}-\d{2}-\d{2}", shown.stdout))) == 40  # a row per day, over two pages
    kinds = {usage["kind"]: usage["data"] for usage in json.loads(as_json.stdout)}
    assert list(kinds) == ["completions", "fine_tuning", "storage"] and all(len(data) == 2 for data in kinds.values())
    refused = CliRunner().invoke(cli, ["usage", "--base-url", api_base_url, "--api-key", new_org_key(settings, "x")])
    assert refused.exit_code != 0 and "admin key" in refused.stderr


def test_the_dashboard_shows_usage_to_admin_keys_only(
    admin: openai.OpenAI, settings: Settings, api_base_url: str, org_key: str
) -> None:
    base = settings.default_base_model
    reply = admin.chat.completions.create(model=base, messages=CHAT, max_tokens=3, temperature=0)
    file = admin.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune")
    day = time.strftime("%Y-%m-%d", time.gmtime())
    with httpx.Client(base_url=api_base_url, timeout=120) as browser, httpx.Client(base_url=api_base_url) as member:
        browser.post("/login", data={"api_key": admin.api_key})
        member.post("/login", data={"api_key": org_key})
        eventually(lambda: todays_results(admin), what="the chat counted")
        page = browser.get("/usage").text
        refused = member.get("/usage")

    row = re.search(rf"<td>{day}</td>\s*<td>{re.escape(base)}</td>(.*?)</tr>", page, re.S)
    assert row, page
    cells = re.findall(r'<td class="number">([^<]*)</td>', row.group(1))
    assert cells[:3] == ["1", f"{reply.usage.prompt_tokens:,}", "3"]  # type: ignore[union-attr]
    assert cells[-1] == f"{file.bytes / 1000:.1f} kB" if file.bytes >= 1000 else f"{file.bytes} B"
    assert refused.status_code == 403 and "admin keys only" in refused.text
