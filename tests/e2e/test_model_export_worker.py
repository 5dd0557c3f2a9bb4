"""A merged export made the way a deployment makes it: `loraport models download --merged` asks the API, the message
goes through Redis to a real training worker, which uploads the merged checkpoint to S3, and the CLI downloads it."""

import subprocess
import sys
import tarfile
from pathlib import Path

import openai
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.core.settings import Settings
from tests.helpers.adapters import greedy_reply, model_with_adapter, service_reply, train_adapter
from tests.helpers.services import ROOT, settings_env
from tests.helpers.workers import forget_other_jobs, start_training_worker, stop


def test_a_training_worker_makes_the_merged_export_the_cli_downloads(
    settings: Settings, api_base_url: str, org_key: str, client: openai.OpenAI, tmp_path: Path
) -> None:
    model_id, _ = model_with_adapter(settings, client, train_adapter(settings, tmp_path / "adapter"))
    forget_other_jobs(settings)
    worker = start_training_worker(settings)
    try:
        downloaded = subprocess.run(
            [sys.executable, "-m", "app.cli.main", "models", "download", model_id, "--merged", "-o", str(tmp_path)]
            + ["--base-url", api_base_url, "--api-key", org_key],
            cwd=ROOT,
            env=settings_env(settings),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        stop(worker)

    assert downloaded.returncode == 0, downloaded.stdout + downloaded.stderr
    [archive] = tmp_path.glob("*-merged.tar")
    with tarfile.open(archive) as opened:
        opened.extractall(tmp_path / "merged", filter="data")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert greedy_reply(merged, AutoTokenizer.from_pretrained(tmp_path / "merged")) == service_reply(client, model_id)
