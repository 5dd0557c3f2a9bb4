"""`loraport jobs …` against the live test server while a worker trains the real default model in this process:
create uploads the file and follows the job to its model id; a bad file stops it before any job exists."""

import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.base_models.from_settings import registry_from_settings
from app.cli.main import app
from app.cli.remote import BAD_REQUEST
from app.config import Settings
from tests.conftest import sdk_client
from tests.datasets import chat_jsonl
from worker.job_runner import run_job

pytestmark = pytest.mark.e2e
runner = CliRunner()


def test_create_uploads_then_follows_the_job_to_its_model(
    tmp_path: Path, api_base_url: str, org_key: str, settings: Settings
) -> None:
    dataset = tmp_path / "tickets.jsonl"
    dataset.write_bytes(chat_jsonl())
    client = sdk_client(api_base_url, org_key)

    def train_when_created() -> None:
        deadline = time.monotonic() + 60
        while not client.fine_tuning.jobs.list().data:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        run_job(settings, registry_from_settings(settings), client.fine_tuning.jobs.list().data[0].id)

    worker = threading.Thread(target=train_when_created)
    worker.start()
    followed = runner.invoke(
        app,
        ["jobs", "create", "--file", str(dataset), "--model", settings.default_base_model, "--epochs", "1",
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
