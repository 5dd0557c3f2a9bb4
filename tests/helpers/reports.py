"""Data reports are computed in the background: tests that read one wait until it is no longer pending."""

from typing import Any

import openai

from tests.helpers.waiting import eventually


def report_now(client: openai.OpenAI, file_id: str, **query: str) -> dict[str, Any]:
    """One `GET /v1/files/{id}/report`: the report, or `{"status": "pending", ...}` while it is computed."""
    return client.get(f"/files/{file_id}/report", cast_to=object, options={"params": query})  # type: ignore[return-value]


def finished_report(client: openai.OpenAI, file_id: str, **query: str) -> dict[str, Any]:
    """The file's report once it is ready (or failed)."""
    return eventually(
        lambda: (body := report_now(client, file_id, **query))["status"] != "pending" and body,
        timeout=60,
        what=f"the report of {file_id}",
    )
