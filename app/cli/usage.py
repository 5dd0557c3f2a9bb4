"""`loraport usage`: what your organisation used each UTC day (an admin key's view of /v1/organization/usage)."""

import time
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from app.cli.remote import ApiKey, BaseUrl, Json, Remote, print_json

out = Console()
DAY = 86_400
KINDS = ("completions", "fine_tuning", "storage")
_COMPLETIONS = ("num_model_requests", "input_tokens", "output_tokens")
Days = typer.Option(7, "--days", min=1, max=366, help="how many UTC days, today included")


def usage(days: int = Days, base_url: str = BaseUrl, api_key: str = ApiKey, as_json: bool = Json) -> None:
    """Completion tokens by model, trained tokens by base model and stored bytes, a row per day (needs an admin
    key)."""
    remote = Remote(base_url, api_key)
    start = (int(time.time()) // DAY - days + 1) * DAY
    buckets = {kind: _buckets(remote, kind, start) for kind in KINDS}
    if as_json:
        print_json([{"kind": kind, "data": data} for kind, data in buckets.items()])
        return
    table = Table("day", "model", caption="tokens, except stored: bytes at the day's end")
    table.columns[0].no_wrap, table.columns[0].min_width = True, 10  # a date is never cut, at any terminal width
    table.columns[1].overflow = "fold"
    for name in ("requests", "input", "output", "jobs", "trained", "stored"):
        table.add_column(name, justify="right")
    for day_buckets in zip(*buckets.values(), strict=True):
        day = time.strftime("%Y-%m-%d", time.gmtime(day_buckets[0]["start_time"]))
        completions, fine_tuning, storage = (bucket["results"] for bucket in day_buckets)
        stored = f"{storage[0]['usage_bytes']:,}" if storage else "0"
        for result in completions:
            table.add_row(day, result["model"], *(f"{result[name]:,}" for name in _COMPLETIONS), "", "", stored)
        for result in fine_tuning:
            trained = (f"{result[name]:,}" for name in ("num_jobs", "trained_tokens"))
            table.add_row(day, result["model"], "", "", "", *trained, stored)
        if not completions and not fine_tuning:
            table.add_row(day, "", "", "", "", "", "", stored)
    out.print(table)


def _buckets(remote: Remote, kind: str, start: int) -> list[dict[str, Any]]:
    """Every bucket from `start` to now, following the pages."""
    params: dict[str, Any] = {"start_time": start, "limit": 31}
    if kind != "storage":
        params["group_by"] = "model"
    buckets: list[dict[str, Any]] = []
    while True:
        page = remote.get(f"/organization/usage/{kind}", **params)
        buckets += page["data"]
        if not page["has_more"]:
            return buckets
        params["page"] = page["next_page"]
