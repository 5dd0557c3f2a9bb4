"""`loraport models list|get|delete` and `loraport chat MODEL`: the models on a Loraport server, and talking to one."""

import json
import re
import secrets
import time
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from app.cli.remote import (
    BAD_REQUEST,
    SERVER_ERROR,
    ApiKey,
    BaseUrl,
    Json,
    Remote,
    fail,
    print_fields,
    print_listing,
    when,
)

models_app = typer.Typer(help="List, inspect, download and delete models.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)
TRANSFER = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
EXPORT_POLL_SECONDS = 2
EXPORT_NOT_MADE = 1  # as a followed job that did not succeed
OUTPUT = typer.Option(
    None,
    "--output",
    "-o",
    help="the .tar to write, or a folder to write it in, made if it ends with / (default: the server's name for it)",
)


@models_app.command("list")
def list_(base_url: str = BaseUrl, api_key: str = ApiKey, as_json: bool = Json) -> None:
    """Base models and your fine-tuned models."""
    print_listing(
        Remote(base_url, api_key).get("/models"), as_json, ("id", "owned by"), lambda m: (m["id"], m["owned_by"])
    )


@models_app.command("get")
def get(model_id: str, base_url: str = BaseUrl, api_key: str = ApiKey, as_json: bool = Json) -> None:
    """A model: its id, owner and creation time."""
    model = Remote(base_url, api_key).get(f"/models/{model_id}")
    print_fields(model, as_json, {"id": model["id"], "owned by": model["owned_by"], "created": when(model["created"])})


@models_app.command("delete")
def delete(model_id: str, base_url: str = BaseUrl, api_key: str = ApiKey) -> None:
    """Delete a fine-tuned model and its adapter."""
    Remote(base_url, api_key).send("DELETE", f"/models/{model_id}")
    out.print(f"deleted {model_id}")


@models_app.command("download")
def download(
    model_id: str,
    output: str | None = OUTPUT,  # a str: a Path would lose the trailing / that asks for a folder
    merged: bool = typer.Option(
        False,
        "--merged",
        help="the model merged into its base model (a plain transformers checkpoint), not the adapter",
    ),
    force: bool = typer.Option(False, "--force", help="overwrite the output if it exists"),
    wait: float = typer.Option(3600, "--wait", min=0, help="seconds to wait for a merged export to be made"),
    base_url: str = BaseUrl,
    api_key: str = ApiKey,
) -> None:
    """Download a fine-tuned model as a .tar: its adapter (peft's files, for `PeftModel.from_pretrained`), or with
    --merged the whole merged checkpoint (for `AutoModelForCausalLM.from_pretrained`), asked for and waited on."""
    remote = Remote(base_url, api_key)
    path = f"/models/{model_id}/adapter"
    if merged:
        path = f"/models/{model_id}/exports/{_finished_export(remote, model_id, wait)}/content"
    with remote.stream("GET", path) as response:
        target = _target(output, _server_filename(response), force)
        _save(response, target, model_id)
    out.print(f"{model_id} saved to {target}", highlight=False)


def _finished_export(remote: Remote, model_id: str, wait: float) -> str:
    """The id of the model's merged export, asked for and then polled until it has succeeded."""
    export = remote.send("POST", f"/models/{model_id}/exports")
    deadline = time.monotonic() + wait
    with err.status(f"Merging {model_id} into its base model: {export['status']}") as status:
        while export["status"] in ("queued", "running"):
            if time.monotonic() >= deadline:
                fail(
                    f"export {export['id']} is still {export['status']} after {wait:g} s; run this again later",
                    EXPORT_NOT_MADE,
                )
            time.sleep(EXPORT_POLL_SECONDS)
            export = remote.get(f"/models/{model_id}/exports/{export['id']}")
            status.update(f"Merging {model_id} into its base model: {export['status']}")
    if export["status"] != "succeeded":
        message = (export.get("error") or {}).get("message")
        fail(f"export {export['id']} failed: {message}; run this again to retry it", EXPORT_NOT_MADE)
    return str(export["id"])


def _server_filename(response: httpx.Response) -> str:
    found = re.search(r'filename="([^"/\\]+)"', response.headers.get("Content-Disposition", ""))
    return found.group(1) if found else "model.tar"


def _target(output: str | None, filename: str, force: bool) -> Path:
    if output is None:
        return _unless_there(Path(filename), force)
    path = Path(output).expanduser()
    if output.endswith("/"):
        path.mkdir(parents=True, exist_ok=True)
    return _unless_there(path / filename if path.is_dir() else path, force)


def _unless_there(target: Path, force: bool) -> Path:
    if target.exists() and not force:
        fail(f"{target} exists; pass --force to overwrite it", BAD_REQUEST)
    return target


def _save(response: httpx.Response, path: Path, model_id: str) -> None:
    """Writes the tar next to `path`, then renames it: an interrupted download leaves no half-written `path`."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        handle = partial.open("xb")
    except OSError as error:
        fail(f"cannot write {path}: {error.strerror}", BAD_REQUEST)
    total = int(response.headers.get("Content-Length", 0)) or None
    try:
        with handle, Progress(*TRANSFER, console=err, transient=True) as progress:
            task = progress.add_task(f"Downloading {model_id}", total=total)
            for chunk in response.iter_bytes():
                handle.write(chunk)
                progress.advance(task, len(chunk))
        if total is not None and partial.stat().st_size != total:
            fail(f"the download of {model_id} was cut short; run this again", SERVER_ERROR)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def chat(
    model: str,
    prompt: str | None = typer.Option(None, "--prompt", help="ask once and exit (without it: a conversation)"),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1),
    base_url: str = BaseUrl,
    api_key: str = ApiKey,
) -> None:
    """Talk to a model, its answer streamed as it is generated; an empty line or Ctrl-D ends a conversation."""
    remote = Remote(base_url, api_key)
    messages: list[dict[str, str]] = []
    while True:
        question = prompt if prompt is not None else _ask()
        if not question:
            return
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": _stream_answer(remote, model, messages, max_tokens)})
        if prompt is not None:
            return


def _ask() -> str:
    try:
        return input("you> ").strip()
    except EOFError:
        return ""


def _stream_answer(remote: Remote, model: str, messages: list[dict[str, str]], max_tokens: int) -> str:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True}
    parts: list[str] = []
    with remote.stream("POST", "/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if "error" in chunk:
                fail(chunk["error"]["message"], SERVER_ERROR)
            for choice in chunk.get("choices", []):
                text = choice["delta"].get("content") or ""
                parts.append(text)
                out.print(text, end="", highlight=False, markup=False, soft_wrap=True)
    out.print()
    return "".join(parts)
