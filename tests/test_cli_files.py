"""`loraport files …` against the live test server, through typer's runner: what a person at a terminal sees, and
the exit codes scripts rely on."""

import json
from pathlib import Path

from typer.testing import CliRunner

from app.cli.main import app
from app.cli.remote import BAD_REQUEST, NOT_FOUND, UNREACHABLE
from tests.datasets import TICKETS, chat_jsonl

runner = CliRunner()


def _run(*args: str, base_url: str, key: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [*args, "--base-url", base_url, "--api-key", key])


def test_a_good_file_uploads_and_its_report_follows(tmp_path: Path, api_base_url: str, org_key: str) -> None:
    dataset = tmp_path / "tickets.jsonl"
    dataset.write_bytes(chat_jsonl() + chat_jsonl()[:200].split(b"\n")[0] + b"\n")  # the first ticket twice

    uploaded = _run("files", "upload", str(dataset), base_url=api_base_url, key=org_key)

    assert uploaded.exit_code == 0, uploaded.output
    file_id = uploaded.stdout.split()[0]
    assert file_id.startswith("file-") and "tickets.jsonl" in uploaded.stdout
    assert f"{len(TICKETS) + 1} examples, format chat" in uploaded.stdout
    assert "warning:" in uploaded.stdout and "duplicate" in uploaded.stdout.lower()
    listed = _run("files", "list", "--json", base_url=api_base_url, key=org_key)
    assert [row["id"] for row in json.loads(listed.stdout)["data"]] == [file_id]


def test_a_refused_file_lists_its_bad_lines_and_exits_non_zero(tmp_path: Path, api_base_url: str, org_key: str) -> None:
    dataset = tmp_path / "broken.jsonl"
    dataset.write_bytes(
        chat_jsonl()
        + b'{"messages": [oops\n'
        + json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
        + b"\n"
    )

    refused = _run("files", "upload", str(dataset), base_url=api_base_url, key=org_key)

    assert refused.exit_code == BAD_REQUEST
    assert "broken.jsonl was refused: 2 error(s)" in refused.stderr
    assert f"{len(TICKETS) + 1} │ invalid_json" in refused.stderr and "no_assistant_message" in refused.stderr
    assert "Traceback" not in refused.output


def test_failures_are_one_line_with_an_exit_code(api_base_url: str, org_key: str) -> None:
    missing = _run("files", "report", "file-nope", base_url=api_base_url, key=org_key)
    wrong_key = _run("files", "list", base_url=api_base_url, key="lp_wrong")
    unreachable = _run("files", "list", base_url="http://127.0.0.1:9", key=org_key)

    assert missing.exit_code == NOT_FOUND and missing.stderr.startswith("error: 404: ")
    assert wrong_key.exit_code == BAD_REQUEST and wrong_key.stderr.startswith("error: 401: ")
    assert unreachable.exit_code == UNREACHABLE and "cannot reach http://127.0.0.1:9" in unreachable.stderr
    assert all(len(r.stderr.strip().splitlines()) == 1 for r in (missing, wrong_key, unreachable))
