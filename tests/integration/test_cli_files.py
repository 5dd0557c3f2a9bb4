"""`loraport files …` against the live test server, through typer's runner: what a person at a terminal sees, and
the exit codes scripts rely on."""

import io
import json
from pathlib import Path

from rich.progress import Progress
from typer.testing import CliRunner

from app.cli.files import _Counted
from app.cli.main import app
from app.cli.remote import BAD_REQUEST, NOT_FOUND, UNREACHABLE
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.services import sdk_client

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


def test_a_file_is_shown_and_downloads_byte_for_byte(tmp_path: Path, api_base_url: str, org_key: str) -> None:
    content = chat_jsonl()
    file_id = sdk_client(api_base_url, org_key).files.create(file=("t.jsonl", content), purpose="fine-tune").id
    saved = tmp_path / "copy.jsonl"

    shown = _run("files", "get", file_id, base_url=api_base_url, key=org_key)
    as_json = _run("files", "get", file_id, "--json", base_url=api_base_url, key=org_key)
    to_stdout = _run("files", "download", file_id, base_url=api_base_url, key=org_key)
    to_file = _run("files", "download", file_id, "-o", str(saved), base_url=api_base_url, key=org_key)

    assert shown.exit_code == 0 and file_id in shown.stdout and "t.jsonl" in shown.stdout
    assert json.loads(as_json.stdout)["id"] == file_id
    assert to_stdout.exit_code == 0 and to_stdout.stdout_bytes == content
    assert to_file.exit_code == 0 and saved.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["copy.jsonl"]  # the partial file was renamed, nothing is left


def test_a_download_overwrites_a_file_only_when_forced(tmp_path: Path, api_base_url: str, org_key: str) -> None:
    file_id = sdk_client(api_base_url, org_key).files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    saved = tmp_path / "copy.jsonl"
    saved.write_bytes(b"mine")

    refused = _run("files", "download", file_id, "-o", str(saved), base_url=api_base_url, key=org_key)
    assert (
        refused.exit_code == BAD_REQUEST
        and refused.stderr.strip() == f"error: {saved} exists; pass --force to overwrite it"
    )
    assert saved.read_bytes() == b"mine"

    forced = _run("files", "download", file_id, "-o", str(saved), "--force", base_url=api_base_url, key=org_key)
    assert forced.exit_code == 0 and saved.read_bytes() == chat_jsonl()


def test_another_organisations_file_or_a_missing_one_is_not_downloaded(
    tmp_path: Path, api_base_url: str, org_key: str, other_org_key: str
) -> None:
    theirs = sdk_client(api_base_url, other_org_key).files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune")

    for file_id in (theirs.id, "file-nope"):
        to_stdout = _run("files", "download", file_id, base_url=api_base_url, key=org_key)
        to_file = _run("files", "download", file_id, "-o", str(tmp_path / "x"), base_url=api_base_url, key=org_key)
        assert to_stdout.exit_code == to_file.exit_code == NOT_FOUND and to_stdout.stdout_bytes == b""
        assert to_file.stderr.startswith("error: 404: ") and len(to_file.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_the_upload_progress_counts_bytes_and_lines() -> None:
    progress = Progress(disable=True)
    task = progress.add_task("", total=7)
    counted = _Counted(io.BytesIO(b"a\nbb\nc\n"), progress, task, "x.jsonl")

    while counted.read(3):
        pass

    assert progress.tasks[0].completed == 7 and progress.tasks[0].description == "Uploading x.jsonl: 3 lines"
