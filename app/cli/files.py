"""`loraport files upload|list|get|download|report|delete`: datasets on a Loraport server."""

import json
import secrets
import time
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TransferSpeedColumn
from rich.table import Table

from app.cli.remote import (
    BAD_REQUEST,
    UNREACHABLE,
    ApiKey,
    BaseUrl,
    Json,
    Remote,
    checked,
    fail,
    print_fields,
    print_json,
    print_listing,
    when,
)

files_app = typer.Typer(help="Upload and inspect datasets.", no_args_is_help=True)
DATASET = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="a JSONL dataset")
OUTPUT = typer.Option(None, "--output", "-o", dir_okay=False, help="a file to write (default: stdout)")
TRANSFER = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
out = Console()
REPORT_WAIT_SECONDS = 60  # after an upload: a small file's report takes a second or two
REPORT_POLL_SECONDS = 2


class _Counted:
    """A file read by the upload, moving a progress bar as its bytes and lines go."""

    def __init__(self, handle: BinaryIO, progress: Progress, task: TaskID, name: str) -> None:
        self._handle, self._progress, self._task, self._name = handle, progress, task, name
        self._lines = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self._lines += chunk.count(b"\n")
        self._progress.update(
            self._task, advance=len(chunk), description=f"Uploading {self._name}: {self._lines} lines"
        )
        return chunk


@files_app.command("upload")
def upload(
    path: Path = DATASET,
    purpose: str = typer.Option("fine-tune", "--purpose"),
    base_url: str = BaseUrl,
    api_key: str = ApiKey,
    as_json: bool = Json,
) -> None:
    """Upload a dataset with a progress bar; a refused file's bad lines are listed with their numbers."""
    remote = Remote(base_url, api_key)
    stored = upload_file(remote, path, purpose)
    if as_json:
        print_json(stored)
        return
    out.print(f"[bold]{stored['id']}[/bold]  {stored['filename']}  {stored['bytes']} bytes, processed")
    _print_report(finished_report(remote, stored["id"], REPORT_WAIT_SECONDS))


def upload_file(remote: Remote, path: Path, purpose: str) -> dict[str, Any]:
    """The stored file; a refused one ends the command with its bad lines listed."""
    with path.open("rb") as handle, Progress(*TRANSFER, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"Uploading {path.name}", total=path.stat().st_size)
        counted = _Counted(handle, progress, task, path.name)
        try:
            with remote.client() as client:
                response = client.post(
                    "/files",
                    # httpx types a file as IO[bytes], but reads it only through `read`.
                    files={"file": (path.name, counted, "application/jsonl")},  # type: ignore[dict-item]
                    data={"purpose": purpose},
                )
        except httpx.TransportError as error:
            fail(f"cannot reach {remote.base_url}: {error}", UNREACHABLE)
    if response.status_code == 400 and "validation" in response.json().get("error", {}):
        _print_refusal(path, response.json()["error"])
        raise typer.Exit(BAD_REQUEST)
    return checked(response)


def _print_refusal(path: Path, error: dict[str, Any]) -> None:
    validation = error["validation"]
    table = Table(title=f"{path.name} was refused: {validation.get('error_count', len(validation['errors']))} error(s)")
    table.add_column("line", justify="right")
    table.add_column("code")
    table.add_column("problem")
    for item in validation["errors"]:
        table.add_row("" if item["line"] is None else str(item["line"]), item["code"], item["message"])
    Console(stderr=True).print(table)


def finished_report(remote: Remote, file_id: str, wait: float) -> dict[str, Any]:
    """The file's report, asked again every few seconds while the server says it is computing, for up to `wait`
    seconds; then what it has (status `pending`)."""
    deadline = time.monotonic() + wait
    with Console(stderr=True).status("Computing the data report…"):
        while (body := remote.get(f"/files/{file_id}/report"))["status"] == "pending" and time.monotonic() < deadline:
            time.sleep(min(REPORT_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
    return body


def _print_report(report: dict[str, Any]) -> None:
    if report.get("status") == "pending":
        out.print(f"The data report is still computing; see it later with `loraport files report {report['file_id']}`.")
        return
    if report.get("status") == "failed":
        out.print(f"[red]The data report could not be computed:[/red] {(report.get('error') or {}).get('message')}")
        return
    counts = report.get("counts", {})
    out.print(f"{counts.get('examples', 0)} examples, format {report.get('format')}")
    for warning in report.get("warnings", []):
        out.print(f"[yellow]warning:[/yellow] {warning['message']}", highlight=False)
    tokens = report.get("tokens") or {}
    if tokens:
        out.print(f"tokens ({tokens.get('model')}): {json.dumps({k: v for k, v in tokens.items() if k != 'model'})}")


@files_app.command("list")
def list_(base_url: str = BaseUrl, api_key: str = ApiKey, as_json: bool = Json) -> None:
    """Your files, newest first."""
    print_listing(
        Remote(base_url, api_key).get("/files", limit=100),
        as_json,
        ("id", "file name", "purpose", "bytes", "status"),
        lambda row: (row["id"], row["filename"], row["purpose"], str(row["bytes"]), row["status"]),
    )


@files_app.command("get")
def get(file_id: str, base_url: str = BaseUrl, api_key: str = ApiKey, as_json: bool = Json) -> None:
    """A file: its name, purpose, size and status."""
    body = Remote(base_url, api_key).get(f"/files/{file_id}")
    fields = {
        "id": body["id"],
        "file name": body["filename"],
        "purpose": body["purpose"],
        "bytes": str(body["bytes"]),
        "status": body["status"],
        "details": body.get("status_details") or "",
        "created": when(body["created_at"]),
    }
    print_fields(body, as_json, fields)


@files_app.command("download")
def download(
    file_id: str,
    output: Path | None = OUTPUT,
    force: bool = typer.Option(False, "--force", help="overwrite --output if it exists"),
    base_url: str = BaseUrl,
    api_key: str = ApiKey,
) -> None:
    """A file's content: to stdout, bytes only, or to --output with a progress bar, whole or not at all."""
    if output is not None and output.exists() and not force:
        fail(f"{output} exists; pass --force to overwrite it", BAD_REQUEST)
    with Remote(base_url, api_key).stream("GET", f"/files/{file_id}/content") as response:
        if output is None:
            _to_stdout(response)
        else:
            _save(response, output, file_id)
    if output is not None:
        out.print(f"{file_id} saved to {output}", highlight=False)


def _to_stdout(response: httpx.Response) -> None:
    stdout = typer.get_binary_stream("stdout")
    for chunk in response.iter_bytes():
        stdout.write(chunk)
    stdout.flush()


def _save(response: httpx.Response, path: Path, file_id: str) -> None:
    """Writes the content next to `path`, then renames it: an interrupted download leaves no half-written `path`."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        handle = partial.open("xb")  # created as `open` creates any file, so the user's umask applies
    except OSError as error:
        fail(f"cannot write {path}: {error.strerror}", BAD_REQUEST)
    total = int(response.headers.get("Content-Length", 0)) or None
    try:
        with handle, Progress(*TRANSFER, console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task(f"Downloading {file_id}", total=total)
            for chunk in response.iter_bytes():
                handle.write(chunk)
                progress.advance(task, len(chunk))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


@files_app.command("report")
def report(
    file_id: str,
    wait: float = typer.Option(600, "--wait", min=0, help="seconds to wait for a report still being computed"),
    base_url: str = BaseUrl,
    api_key: str = ApiKey,
    as_json: bool = Json,
) -> None:
    """A file's data report: duplicates, conflicting answers, answer shape, token counts; computed on the server in
    the background, so this waits for it (up to --wait seconds)."""
    body = finished_report(Remote(base_url, api_key), file_id, wait)
    if as_json:
        print_json(body)
    else:
        _print_report(body)


@files_app.command("delete")
def delete(file_id: str, base_url: str = BaseUrl, api_key: str = ApiKey) -> None:
    """Delete a file."""
    Remote(base_url, api_key).send("DELETE", f"/files/{file_id}")
    out.print(f"deleted {file_id}")
