"""`loraport models download`: the adapter, or the merged model once a worker has made it, written as a .tar."""

import subprocess
import sys
import tarfile
from pathlib import Path

import openai
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from app.cli.main import app
from app.cli.remote import BAD_REQUEST, NOT_FOUND
from app.core.db import transaction
from app.core.settings import Settings
from app.core.tables import ModelExport
from app.ml.base_models.from_settings import registry_from_settings
from tests.helpers.adapters import model_with_adapter, train_adapter
from tests.helpers.cli import loraport
from tests.helpers.services import ROOT, settings_env
from tests.helpers.tiny_models import TINY_MODEL_ID
from tests.helpers.waiting import eventually
from worker.model_export import run_export


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Path:
    return train_adapter(settings, tmp_path_factory.mktemp("adapter"))


@pytest.fixture
def model_id(settings: Settings, client: openai.OpenAI, adapter: Path) -> str:
    return model_with_adapter(settings, client, adapter)[0]


def _names(path: Path) -> list[str]:
    with tarfile.open(path) as archive:
        return sorted(archive.getnames())


def test_download_writes_the_adapter_tar_to_the_output(
    settings: Settings, api_base_url: str, org_key: str, model_id: str, tmp_path: Path
) -> None:
    remote = ["--base-url", api_base_url, "--api-key", org_key]

    printed = loraport(settings, "models", "download", model_id, "-o", str(tmp_path / "adapter.tar"), *remote)
    into_folder = loraport(settings, "models", "download", model_id, "-o", str(tmp_path), *remote)

    assert "adapter_model.safetensors" in _names(tmp_path / "adapter.tar") and "saved to" in printed
    [named] = [path for path in tmp_path.iterdir() if path.name != "adapter.tar" and path.is_file()]
    assert named.name.endswith("-adapter.tar") and str(named) in into_folder.replace("\n", "")
    assert _names(named) == _names(tmp_path / "adapter.tar")
    loraport(settings, "models", "download", model_id, "-o", f"{tmp_path}/new/folder/", *remote)  # made for it
    assert [path.name for path in (tmp_path / "new" / "folder").iterdir()] == [named.name]


def test_download_merged_asks_for_the_export_waits_for_it_then_writes_it(
    settings: Settings, api_base_url: str, org_key: str, model_id: str, tmp_path: Path
) -> None:
    output = tmp_path / "merged.tar"
    command = [sys.executable, "-m", "app.cli.main", "models", "download", model_id, "--merged", "-o", str(output)]
    cli = subprocess.Popen(
        [*command, "--base-url", api_base_url, "--api-key", org_key],
        cwd=ROOT,
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        export_id = eventually(lambda: _export_of(settings, model_id), timeout=60, what="the CLI to ask for the export")
        run_export(settings, registry_from_settings(settings), export_id)  # the worker, while the CLI waits
        stdout, stderr = cli.communicate(timeout=60)
    finally:
        cli.kill()

    assert cli.returncode == 0, stdout + stderr
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(_names(output))
    assert f"{model_id} saved to" in stdout


def test_download_of_a_base_model_or_another_organisation_s_model_is_refused_and_writes_nothing(
    api_base_url: str, org_key: str, other_org_key: str, model_id: str, tmp_path: Path
) -> None:
    output = ["-o", str(tmp_path / "out.tar")]
    base = CliRunner().invoke(
        app, ["models", "download", TINY_MODEL_ID, *output, "--base-url", api_base_url, "--api-key", org_key]
    )
    theirs = CliRunner().invoke(
        app,
        ["models", "download", model_id, "--merged", *output, "--base-url", api_base_url, "--api-key", other_org_key],
    )

    assert base.exit_code == BAD_REQUEST and "is a base model" in base.stderr
    assert theirs.exit_code == NOT_FOUND and model_id in theirs.stderr
    assert list(tmp_path.iterdir()) == []


def _export_of(settings: Settings, model_id: str) -> str | None:
    with transaction(settings.require("database_url")) as session:
        return session.scalar(select(ModelExport.id).where(ModelExport.model == model_id))
