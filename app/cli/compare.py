"""`loraport compare MODEL_A MODEL_B --file heldout.jsonl`: two models' answers to the same held-out prompts, side
by side with the expected answers."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from app.cli.remote import BAD_REQUEST, ApiKey, BaseUrl, Remote, fail, print_json
from app.ml.datasets.formats import detect_format, parse_example
from app.ml.datasets.messages import InvalidExample

out = Console()
HELD_OUT_FILE = typer.Option(..., "--file", dir_okay=False, help="a JSONL file: chat or prompt/completion lines")
PROMPT_SHOWN = 60  # characters of the prompt in the table; the answers are shown whole


@dataclass(frozen=True)
class HeldOut:
    messages: list[dict[str, Any]]  # what the models are asked
    expected: str | None  # the answer the file holds, if it holds one


def compare(
    model_a: str,
    model_b: str,
    file: Path = HELD_OUT_FILE,
    max_examples: int = typer.Option(20, "--max-examples", min=1),
    max_tokens: int = typer.Option(128, "--max-tokens", min=1),
    base_url: str = BaseUrl,
    api_key: str = ApiKey,
    as_json: bool = typer.Option(False, "--json", help="print the answers as JSON, for scripts"),
) -> None:
    """Ask two models the prompts of a held-out file (temperature 0) and show their answers beside the expected."""
    examples = read_held_out(file, max_examples)
    remote = Remote(base_url, api_key)
    answers: list[tuple[str, str]] = []
    with Console(stderr=True).status("") as status:
        for number, example in enumerate(examples, 1):
            status.update(f"asking example {number} of {len(examples)}")
            answers.append(
                (_answer(remote, model_a, example, max_tokens), _answer(remote, model_b, example, max_tokens))
            )
    if as_json:
        print_json(
            [
                {"prompt": _prompt(e), "expected": e.expected, "answers": {"model_a": a, "model_b": b}}
                for e, (a, b) in zip(examples, answers, strict=True)
            ]
        )
        return
    _print_table(model_a, model_b, examples, answers)


def read_held_out(path: Path, limit: int) -> list[HeldOut]:
    """The first `limit` examples of a local JSONL file; a bad line ends the command with one line naming it."""
    examples: list[HeldOut] = []
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if len(examples) == limit:
                    break
                if line.strip():
                    examples.append(_held_out(path, number, line))
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}", BAD_REQUEST)
    except UnicodeDecodeError:
        fail(f"{path} is not UTF-8 text", BAD_REQUEST)
    if not examples:
        fail(f"{path} holds no examples", BAD_REQUEST)
    return examples


def _held_out(path: Path, number: int, line: str) -> HeldOut:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as error:
        fail(f"{path} line {number}: invalid JSON ({error.msg})", BAD_REQUEST)
    format = detect_format(raw) if isinstance(raw, dict) else None
    if format is None:
        fail(
            f'{path} line {number}: expected {{"messages": [...]}} or {{"prompt": ..., "completion": ...}}', BAD_REQUEST
        )
    try:
        example = parse_example(raw, format, number)
    except InvalidExample as error:
        fail(f"{path}: {error.message}", BAD_REQUEST)
    if not any(message["role"] == "user" for message in example.input_messages):
        fail(f"{path} line {number}: no user message to ask the models", BAD_REQUEST)
    return HeldOut(example.input_messages, example.targets[0] if example.targets else None)


def _answer(remote: Remote, model: str, example: HeldOut, max_tokens: int) -> str:
    body = {"model": model, "messages": example.messages, "max_tokens": max_tokens, "temperature": 0}
    return remote.send("POST", "/chat/completions", json=body)["choices"][0]["message"]["content"] or ""


def _prompt(example: HeldOut) -> str:
    prompt: str = next(m["content"] for m in reversed(example.messages) if m["role"] == "user")
    return prompt


def _print_table(model_a: str, model_b: str, examples: list[HeldOut], answers: list[tuple[str, str]]) -> None:
    table = Table("#", "prompt", "expected", model_a, model_b, show_lines=True)
    for number, (example, (a, b)) in enumerate(zip(examples, answers, strict=True), 1):
        prompt = _prompt(example)
        shown = prompt if len(prompt) <= PROMPT_SHOWN else prompt[: PROMPT_SHOWN - 1] + "…"
        table.add_row(str(number), Text(shown), Text(example.expected or ""), Text(a), Text(b))
    out.print(table)
    judged = [
        (e.expected.strip(), a.strip(), b.strip()) for e, (a, b) in zip(examples, answers, strict=True) if e.expected
    ]
    if judged:
        a_matches = sum(expected == a for expected, a, _ in judged)
        b_matches = sum(expected == b for expected, _, b in judged)
        out.print(
            f"exact matches with the expected answer: {model_a} {a_matches}/{len(judged)}, "
            f"{model_b} {b_matches}/{len(judged)}",
            highlight=False,
        )
