"""`loraport jobs create|follow|list|get|cancel|events|checkpoints`: fine-tuning jobs on a Loraport server."""

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from app.cli.files import upload_file
from app.cli.remote import ApiKey, BaseUrl, Json, Remote, fail, print_fields, print_json, print_listing, when

jobs_app = typer.Typer(help="Create and follow fine-tuning jobs.", no_args_is_help=True)
out = Console()
FINISHED = ("succeeded", "failed", "cancelled")
JOB_DID_NOT_SUCCEED, DETACHED = 1, 130
POLL_S = 1.0
DATASET_TO_UPLOAD = typer.Option(None, "--file", exists=True, dir_okay=False, help="a dataset to upload first")


@jobs_app.command("create")
def create(
    model: str = typer.Option(..., "--model", help="a base model, or a fine-tuned model to train further"),
    file: Path | None = DATASET_TO_UPLOAD,
    file_id: str | None = typer.Option(None, "--file-id", help="an uploaded dataset"),
    validation_file_id: str | None = typer.Option(None, "--validation-file-id"),
    suffix: str | None = typer.Option(None, "--suffix"),
    epochs: int | None = typer.Option(None, "--epochs", min=1),
    follow_job: bool = typer.Option(True, "--follow/--no-follow", help="watch the job until it ends"),
    base_url: str = BaseUrl,
    api_key: str = ApiKey,
    as_json: bool = Json,
) -> None:
    """Create a job (uploading --file first), then follow it until it ends."""
    remote = Remote(base_url, api_key)
    if file is not None and file_id is None:
        training_file: str = upload_file(remote, file, "fine-tune")["id"]
    elif file_id is not None and file is None:
        training_file = file_id
    else:
        fail("give either --file or --file-id", 2)
    body: dict[str, Any] = {"model": model, "training_file": training_file}
    body |= {"validation_file": validation_file_id} if validation_file_id else {}
    body |= {"suffix": suffix} if suffix else {}
    body |= {"hyperparameters": {"n_epochs": epochs}} if epochs else {}
    job = remote.send("POST", "/fine_tuning/jobs", json=body)
    if as_json and not follow_job:
        print_json(job)
        return
    out.print(f"[bold]{job['id']}[/bold] created ({job['status']})")
    if follow_job:
        _follow(remote, job["id"])


@jobs_app.command("follow")
def follow(job_id: str, base_url: str = BaseUrl, api_key: str = ApiKey) -> None:
    """Watch a job: a progress bar, losses and events as they come; Ctrl-C detaches without cancelling."""
    _follow(Remote(base_url, api_key), job_id)


def _follow(remote: Remote, job_id: str) -> None:
    seen: set[str] = set()
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=out) as progress:
            task = progress.add_task("waiting for a worker", total=None)
            while True:
                job = remote.get(f"/fine_tuning/jobs/{job_id}")
                events = remote.get(f"/fine_tuning/jobs/{job_id}/events", limit=100)["data"]
                for event in reversed([e for e in events if e["id"] not in seen]):
                    seen.add(event["id"])
                    data = event.get("data") or {}
                    if event["type"] == "metrics":
                        progress.update(task, total=data["total_steps"], completed=data["step"])
                        progress.update(task, description=_losses(data))
                    else:
                        style = {"warn": "yellow", "error": "red"}.get(event["level"], "")
                        progress.console.print(f"[{style}]{event['message']}[/{style}]" if style else event["message"],
                                               highlight=False)  # fmt: skip
                if job["status"] in FINISHED:
                    break
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        out.print(f"detached; {job_id} goes on. Follow it again with: loraport jobs follow {job_id}", soft_wrap=True)
        raise typer.Exit(DETACHED) from None
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        fail(
            f"{job_id} {job['status']}" + (f": {error['message']}" if error.get("message") else ""), JOB_DID_NOT_SUCCEED
        )
    out.print(f"fine-tuned model: [bold]{job['fine_tuned_model']}[/bold]", soft_wrap=True)  # one line, for scripts


def _losses(data: dict[str, Any]) -> str:
    text = f"epoch {data['epoch']}  train loss {data['train_loss']:.4f}"
    return text + (f"  valid loss {data['valid_loss']:.4f}" if data.get("valid_loss") is not None else "")


@jobs_app.command("list")
def list_(base_url: str = BaseUrl, api_key: str = ApiKey, as_json: bool = Json) -> None:
    """Your jobs, newest first."""
    print_listing(
        Remote(base_url, api_key).get("/fine_tuning/jobs", limit=100),
        as_json,
        ("id", "status", "model", "fine-tuned model"),
        lambda job: (job["id"], job["status"], job["model"], job["fine_tuned_model"] or ""),
    )


@jobs_app.command("get")
def get(job_id: str, base_url: str = BaseUrl, api_key: str = ApiKey, as_json: bool = Json) -> None:
    """A job: status, models, files and hyperparameters."""
    job = Remote(base_url, api_key).get(f"/fine_tuning/jobs/{job_id}")
    fields = {
        "id": job["id"],
        "status": job["status"],
        "error": (job.get("error") or {}).get("message") or "",
        "model": job["model"],
        "fine-tuned model": job.get("fine_tuned_model") or "",
        "method": job["method"]["type"],
        "training file": job["training_file"],
        "validation file": job.get("validation_file") or "",
        "hyperparameters": ", ".join(f"{name} {value}" for name, value in job["hyperparameters"].items()),
        "created": when(job["created_at"]),
        "finished": when(job.get("finished_at")),
    }
    print_fields(job, as_json, fields)


@jobs_app.command("cancel")
def cancel(job_id: str, base_url: str = BaseUrl, api_key: str = ApiKey) -> None:
    """Cancel a job that has not ended."""
    job = Remote(base_url, api_key).send("POST", f"/fine_tuning/jobs/{job_id}/cancel")
    out.print(f"{job['id']} {job['status']}")


@jobs_app.command("events")
def events(job_id: str, base_url: str = BaseUrl, api_key: str = ApiKey, as_json: bool = Json) -> None:
    """A job's events, oldest first."""
    body = Remote(base_url, api_key).get(f"/fine_tuning/jobs/{job_id}/events", limit=100)
    if as_json:
        print_json(body)
        return
    for event in reversed(body["data"]):
        out.print(f"{event['level']:5}  {event['message']}", highlight=False)


@jobs_app.command("checkpoints")
def checkpoints(job_id: str, base_url: str = BaseUrl, api_key: str = ApiKey, as_json: bool = Json) -> None:
    """A job's checkpoints, servable as models."""
    print_listing(
        Remote(base_url, api_key).get(f"/fine_tuning/jobs/{job_id}/checkpoints", limit=100),
        as_json,
        ("step", "model", "valid loss"),
        lambda row: (
            str(row["step_number"]),
            row["fine_tuned_model_checkpoint"],
            str(row["metrics"].get("valid_loss")),
        ),
    )
