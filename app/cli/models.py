"""`loraport models list|get|delete` and `loraport chat MODEL`: the models on a Loraport server, and talking to one."""

import json

import typer
from rich.console import Console

from app.cli.remote import (
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

models_app = typer.Typer(help="List, inspect and delete models.", no_args_is_help=True)
out = Console()


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
