"""Where `loraport` commands find their server and key: option, else environment, else the config file that
`loraport up` writes, else (for the URL) the local default."""

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import user_config
from app.cli.main import app
from app.cli.remote import BAD_REQUEST, NO_API_KEY, UNREACHABLE
from tests.helpers.datasets import chat_jsonl
from tests.helpers.services import sdk_client

runner = CliRunner()


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty config home, and no LORAPORT_BASE_URL or LORAPORT_API_KEY from the machine running the tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("LORAPORT_BASE_URL", raising=False)
    monkeypatch.delenv("LORAPORT_API_KEY", raising=False)
    return tmp_path


def test_the_saved_key_is_readable_by_its_user_only(config_home: Path) -> None:
    path = user_config.save("http://127.0.0.1:8000", "lp_first")
    user_config.save("http://127.0.0.1:8001", "lp_second")

    assert path == config_home / "loraport" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert user_config.load() == {"base_url": "http://127.0.0.1:8001", "api_key": "lp_second"}
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]


def test_commands_use_the_saved_server_and_key(api_base_url: str, org_key: str) -> None:
    file_id = sdk_client(api_base_url, org_key).files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    user_config.save(api_base_url, org_key)

    listed = runner.invoke(app, ["files", "list", "--json"])

    assert listed.exit_code == 0, listed.output
    assert [row["id"] for row in json.loads(listed.stdout)["data"]] == [file_id]


def test_options_and_environment_come_before_the_saved_config(api_base_url: str, org_key: str) -> None:
    user_config.save("http://127.0.0.1:9", "lp_saved")

    from_environment = runner.invoke(app, ["files", "list"], env={"LORAPORT_BASE_URL": api_base_url,
                                                                  "LORAPORT_API_KEY": org_key})  # fmt: skip
    from_options = runner.invoke(
        app, ["files", "list", "--base-url", api_base_url, "--api-key", "lp_option"], env={"LORAPORT_API_KEY": org_key}
    )
    saved_url = runner.invoke(app, ["files", "list", "--api-key", org_key])

    assert from_environment.exit_code == 0, from_environment.output
    assert from_options.exit_code == BAD_REQUEST and from_options.stderr.startswith("error: 401: ")
    assert saved_url.exit_code == UNREACHABLE and "cannot reach http://127.0.0.1:9" in saved_url.stderr


def test_without_a_key_anywhere_the_command_says_where_to_get_one(config_home: Path) -> None:
    missing = runner.invoke(app, ["files", "list"])
    (config_home / "loraport").mkdir()
    (config_home / "loraport" / "config.json").write_text("{oops")
    unreadable = runner.invoke(app, ["files", "list"])

    assert missing.exit_code == BAD_REQUEST and missing.stderr == f"error: {NO_API_KEY}\n"
    assert unreadable.exit_code == BAD_REQUEST and "config.json" in unreadable.stderr
    assert len(unreadable.stderr.strip().splitlines()) == 1
