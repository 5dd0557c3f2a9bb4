"""How CLI commands reach a Loraport server: its URL and an API key (options or environment), requests with one
readable line and a known exit code for every failure."""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Exit codes scripts can rely on.
BAD_REQUEST, NOT_FOUND, UNREACHABLE, SERVER_ERROR = 2, 3, 4, 5

err = Console(stderr=True)
out = Console()

BaseUrl = typer.Option(DEFAULT_BASE_URL, "--base-url", envvar="LORAPORT_BASE_URL", help="the server")
ApiKey = typer.Option(..., "--api-key", envvar="LORAPORT_API_KEY", help="an API key (loraport keys create)")
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

    def get(self, path: str, **params: Any) -> dict:
        return self.send("GET", path, params=params)

    def send(self, method: str, path: str, **request: Any) -> dict:
        """The response's JSON; a failure ends the command with its one-line message and exit code."""
        try:
            with self.client() as client:
                response = client.request(method, path, **request)
        except httpx.TransportError as error:
            fail(f"cannot reach {self.base_url}: {error}", UNREACHABLE)
        return checked(response)


def checked(response: httpx.Response) -> dict:
    if response.is_success:
        return response.json()
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:300] or response.reason_phrase
    code = NOT_FOUND if response.status_code == 404 else BAD_REQUEST if response.status_code < 500 else SERVER_ERROR
    fail(f"{response.status_code}: {message}", code)


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def print_json(body: dict) -> None:
    out.print_json(json.dumps(body))


def print_listing(body: dict, as_json: bool, columns: Sequence[str], row: Callable[[dict], Sequence[str]]) -> None:
    """A list the server returned: its JSON with `--json`, else a table with a row per item."""
    if as_json:
        print_json(body)
        return
    table = Table(*columns)
    for item in body["data"]:
        table.add_row(*row(item))
    out.print(table)
