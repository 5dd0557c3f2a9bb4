"""`loraport jobs …` against the live test server while a worker trains the real default model in this process:
create uploads the file and follows the job to its model id; a bad file stops it before any job exists; Ctrl-C
on a followed job detaches and leaves the job alone."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from typer.testing import CliRunner

from app.cli.jobs import DETACHED
from app.cli.main import app
from app.cli.remote import BAD_REQUEST
from app.core.settings import Settings
from app.ml.base_models.from_settings import registry_from_settings
from tests.helpers.datasets import chat_jsonl
from tests.helpers.services import ROOT, sdk_client
from tests.helpers.tiny_models import TINY_MODEL_ID
from tests.helpers.waiting import eventually
from worker.job_runner import run_job

runner = CliRunner()


def test_create_uploads_then_follows_the_job_to_its_model(
    tmp_path: Path, api_base_url: str, org_key: str, settings: Settings
) -> None:
    dataset = tmp_path / "tickets.jsonl"
    dataset.write_bytes(chat_jsonl())
    client = sdk_client(api_base_url, org_key)

    def train_when_created() -> None:
        [job] = eventually(lambda: client.fine_tuning.jobs.list().data, what="the job the CLI creates")
        run_job(settings, registry_from_settings(settings), job.id)

    worker = threading.Thread(target=train_when_created)
    worker.start()
    followed = runner.invoke(
        app,
        ["jobs", "create", "--file", str(dataset), "--model", TINY_MODEL_ID, "--epochs", "1",
         "--base-url", api_base_url, "--api-key", org_key],
    )  # fmt: skip
    worker.join()

    assert followed.exit_code == 0, followed.output
    [job] = client.fine_tuning.jobs.list().data
    assert f"{job.id} created" in followed.stdout
    assert "Fine-tuning job started" in followed.stdout and "Evaluation: fine-tuned:" in followed.stdout
    assert followed.stdout.rstrip().endswith(f"fine-tuned model: {job.fine_tuned_model}")


def test_create_with_a_bad_file_makes_no_job(tmp_path: Path, api_base_url: str, org_key: str) -> None:
    dataset = tmp_path / "broken.jsonl"
    dataset.write_bytes(chat_jsonl() + b'{"messages": [oops\n')

    refused = runner.invoke(
        app, ["jobs", "create", "--file", str(dataset), "--model", "smollm2-135m-instruct",
              "--base-url", api_base_url, "--api-key", org_key],
    )  # fmt: skip

    assert refused.exit_code == BAD_REQUEST and "invalid_json" in refused.stderr
    assert sdk_client(api_base_url, org_key).fine_tuning.jobs.list().data == []


def test_ctrl_c_detaches_from_a_followed_job_without_cancelling_it(
    api_base_url: str, org_key: str, settings: Settings
) -> None:
    client = sdk_client(api_base_url, org_key)
    training_file = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model=settings.default_base_model, training_file=training_file)  # no worker
    follow = ["jobs", "follow", job.id, "--base-url", api_base_url, "--api-key", org_key]
    follower = subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", *follow],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout or ()], daemon=True)
    reader.start()
    try:
        output = ""
        deadline = time.monotonic() + 60
        while "Created fine-tuning job" not in output:  # its first event: the command is following the job
            output += lines.get(timeout=max(deadline - time.monotonic(), 0.1))
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == DETACHED
        reader.join(timeout=10)
        output += "".join(lines.queue)  # what it printed after the signal, all read once it exited
        assert f"Follow it again with: loraport jobs follow {job.id}" in output
        assert "Traceback" not in output
        assert client.fine_tuning.jobs.retrieve(job.id).status in ("validating_files", "queued")
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
        client.fine_tuning.jobs.cancel(job.id)  # nothing is left queued for a later test's worker


def test_get_shows_a_job_and_its_json(api_base_url: str, org_key: str, settings: Settings) -> None:
    client = sdk_client(api_base_url, org_key)
    training = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=training.id, model=settings.default_base_model, suffix="cli")
    remote = ["--base-url", api_base_url, "--api-key", org_key]

    shown = runner.invoke(app, ["jobs", "get", job.id, *remote])
    as_json = runner.invoke(app, ["jobs", "get", job.id, "--json", *remote])
    client.fine_tuning.jobs.cancel(job.id)  # no worker trains it here

    assert shown.exit_code == 0, shown.output
    assert job.id in shown.stdout and "queued" in shown.stdout and training.id in shown.stdout
    assert "n_epochs" in shown.stdout
    assert json.loads(as_json.stdout)["id"] == job.id
