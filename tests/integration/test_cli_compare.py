"""`loraport compare` against the live test server, the default base model on both sides (no training needed)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import compare
from app.cli.main import app
from app.cli.remote import BAD_REQUEST, NOT_FOUND
from app.core.settings import Settings
from tests.helpers.datasets import TICKETS, chat_jsonl

runner = CliRunner()


def _held_out(tmp_path: Path, *lines: bytes) -> Path:
    path = tmp_path / "heldout.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def test_both_models_answer_each_prompt_beside_the_expected_answer(
    tmp_path: Path, api_base_url: str, org_key: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The console took its width when the module was imported, from a terminal this process may not have.
    monkeypatch.setattr(compare.out, "width", 200)
    (question, answer), (other_question, other_answer) = TICKETS[:2]
    held_out = _held_out(
        tmp_path,
        chat_jsonl([(question, answer)]),
        json.dumps({"prompt": other_question, "completion": other_answer}).encode() + b"\n",
    )
    model = settings.default_base_model
    args = ["compare", model, model, "--file", str(held_out), "--max-tokens", "4"]
    remote = ["--base-url", api_base_url, "--api-key", org_key]

    table = runner.invoke(app, [*args, *remote], env={"COLUMNS": "200"})
    as_json = runner.invoke(app, [*args, "--json", *remote])

    assert table.exit_code == 0, table.output
    header = next(line for line in table.stdout.splitlines() if "prompt" in line)
    assert header.count(model) == 2 and "expected" in header
    assert f"Ticket: {question}" in table.stdout and other_question in table.stdout
    assert "exact matches with the expected answer: " in table.stdout and table.stdout.count("/2") == 2
    rows = json.loads(as_json.stdout)
    assert [(row["prompt"], row["expected"]) for row in rows] == [
        (f"Ticket: {question}", answer),
        (other_question, other_answer),
    ]
    assert all(isinstance(row["answers"][side], str) for row in rows for side in ("model_a", "model_b"))


def test_a_bad_file_names_its_line_before_any_model_is_asked(tmp_path: Path, api_base_url: str, org_key: str) -> None:
    remote = ["--base-url", api_base_url, "--api-key", org_key]
    no_user = json.dumps(
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "ok"}]}
    )
    cases = {
        str(tmp_path / "missing.jsonl"): "cannot read",
        str(_held_out(tmp_path, chat_jsonl(TICKETS[:1]), b'{"messages": [oops\n')): "line 2: invalid JSON",
        str(_held_out(tmp_path, no_user.encode() + b"\n")): "line 1: no user message",
    }

    for path, problem in cases.items():
        refused = runner.invoke(app, ["compare", "a", "b", "--file", path, *remote])
        assert refused.exit_code == BAD_REQUEST and problem in refused.stderr, refused.output
        assert len(refused.stderr.strip().splitlines()) == 1


def test_an_unknown_model_is_the_servers_not_found(
    tmp_path: Path, api_base_url: str, org_key: str, settings: Settings
) -> None:
    held_out = _held_out(tmp_path, chat_jsonl(TICKETS[:1]))

    unknown = runner.invoke(
        app,
        ["compare", settings.default_base_model, "ft:nobody", "--file", str(held_out), "--max-tokens", "2",
         "--base-url", api_base_url, "--api-key", org_key],
    )  # fmt: skip

    assert (
        unknown.exit_code == NOT_FOUND and unknown.stderr.startswith("error: 404: ") and "ft:nobody" in unknown.stderr
    )
    assert len(unknown.stderr.strip().splitlines()) == 1
