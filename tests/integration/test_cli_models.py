"""`loraport models …` and `loraport chat` against the live test server (the default base model answers)."""

import json

from typer.testing import CliRunner

from app.cli.main import app
from app.cli.remote import NOT_FOUND
from app.core.settings import Settings

runner = CliRunner()


def test_models_are_listed_and_an_unknown_one_is_not_found(api_base_url: str, org_key: str, settings: Settings) -> None:
    remote = ["--base-url", api_base_url, "--api-key", org_key]
    listed = runner.invoke(app, ["models", "list", "--json", *remote])
    missing = runner.invoke(app, ["models", "get", "ft:nobody", *remote])
    shown = runner.invoke(app, ["models", "get", settings.default_base_model, *remote])
    as_json = runner.invoke(app, ["models", "get", settings.default_base_model, "--json", *remote])

    assert listed.exit_code == 0 and settings.default_base_model in [m["id"] for m in json.loads(listed.stdout)["data"]]
    assert missing.exit_code == NOT_FOUND and "ft:nobody" in missing.stderr
    assert shown.exit_code == 0 and "owned by" in shown.stdout and settings.default_base_model in shown.stdout
    assert json.loads(as_json.stdout)["id"] == settings.default_base_model


def test_chat_streams_an_answer_once_or_in_a_conversation(api_base_url: str, org_key: str, settings: Settings) -> None:
    remote = ["--base-url", api_base_url, "--api-key", org_key]
    once = runner.invoke(
        app, ["chat", settings.default_base_model, "--prompt", "Say hello", "--max-tokens", "8", *remote]
    )
    talk = runner.invoke(
        app, ["chat", settings.default_base_model, "--max-tokens", "6", *remote], input="Hi!\nAnd again?\n\n"
    )
    unknown = runner.invoke(app, ["chat", "ft:nobody", "--prompt", "Hi", *remote])

    assert once.exit_code == 0 and once.stdout.strip()
    assert talk.exit_code == 0 and talk.stdout.count("you> ") == 3  # two questions, then the empty line ends it
    assert unknown.exit_code == NOT_FOUND and unknown.stderr.startswith("error: 404: ")
