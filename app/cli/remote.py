"""How CLI commands reach a Loraport server: its URL and an API key (option, else environment, else the config file
`loraport up` writes), requests with one readable line and a known exit code for every failure."""

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from app.cli import user_config

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Exit codes scripts can rely on.
BAD_REQUEST, NOT_FOUND, UNREACHABLE, SERVER_ERROR = 2, 3, 4, 5

NO_API_KEY = (
    "no API key: pass --api-key, set LORAPORT_API_KEY, or start the server once with `loraport up`, which remembers "
    "its key"
)

err = Console(stderr=True, soft_wrap=True)  # an error stays one line, however narrow the terminal
out = Console()


def _saved(key: str) -> str | None:
    try:
        return user_config.load().get(key)
    except (OSError, ValueError) as error:
        fail(f"cannot read {user_config.config_path()}: {error}; fix or delete it", BAD_REQUEST)


def _base_url(value: str | None) -> str:
    return value or _saved("base_url") or DEFAULT_BASE_URL


def _api_key(value: str | None) -> str:
    key = value or _saved("api_key")
    if not key:
        fail(NO_API_KEY, BAD_REQUEST)
    return key


# Typer resolves the option, then its environment variable; the callbacks fall back on the config file.
BaseUrl = typer.Option(
    None,
    "--base-url",
    envvar="LORAPORT_BASE_URL",
    callback=_base_url,
    help=f"the server (default: the one `loraport up` saved, else {DEFAULT_BASE_URL})",
)
ApiKey = typer.Option(
    None,
    "--api-key",
    envvar="LORAPORT_API_KEY",
    callback=_api_key,
    help="an API key from `loraport keys create` (default: the one `loraport up` saved)",
)
Json = typer.Option(False, "--json", help="print the server's JSON, for scripts")


@dataclass(frozen=True)
class Remote:
    base_url: str
    api_key: str

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.base_url.rstrip('/')}/v1",
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=httpx.Timeout(30, read=None, write=None),
        )

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        return self.send("GET", path, params=params)

    def send(self, method: str, path: str, **request: Any) -> dict[str, Any]:
        """The response's JSON; a failure ends the command with its one-line message and exit code."""
        try:
            with self.client() as client:
                response = client.request(method, path, **request)
        except httpx.TransportError as error:
            fail(f"cannot reach {self.base_url}: {error}", UNREACHABLE)
        return checked(response)

    @contextmanager
    def stream(self, method: str, path: str, **request: Any) -> Iterator[httpx.Response]:
        """A response to read as it arrives, once it succeeded; a failure ends the command as `send`'s does."""
        try:
            with self.client() as client, client.stream(method, path, **request) as response:
                if not response.is_success:
                    response.read()
                    checked(response)
                yield response
        except httpx.TransportError as error:
            fail(f"cannot reach {self.base_url}: {error}", UNREACHABLE)


def checked(response: httpx.Response) -> dict[str, Any]:
    if response.is_success:
        body: dict[str, Any] = response.json()
        return body
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:300] or response.reason_phrase
    code = NOT_FOUND if response.status_code == 404 else BAD_REQUEST if response.status_code < 500 else SERVER_ERROR
    fail(f"{response.status_code}: {message}", code)


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def print_json(body: dict[str, Any] | list[dict[str, Any]]) -> None:
    out.print_json(json.dumps(body))


def print_listing(
    body: dict[str, Any], as_json: bool, columns: Sequence[str], row: Callable[[dict[str, Any]], Sequence[str]]
) -> None:
    """A list the server returned: its JSON with `--json`, else a table with a row per item."""
    if as_json:
        print_json(body)
        return
    table = Table(*columns)
    for item in body["data"]:
        table.add_row(*row(item))
    out.print(table)


def print_fields(body: dict[str, Any], as_json: bool, fields: dict[str, str]) -> None:
    """One object the server returned: its JSON with `--json`, else its non-empty `fields`, a name and value a line."""
    if as_json:
        print_json(body)
        return
    table = Table.grid(padding=(0, 2))
    for name, value in fields.items():
        if value:
            table.add_row(f"[bold]{name}[/bold]", escape(value))
    out.print(table)


def when(unix_seconds: int | None) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).strftime("%Y-%m-%d %H:%M UTC") if unix_seconds else ""
