"""`loraport keys create|list|revoke`: API keys, against the deployment's database."""

import typer
from rich.console import Console
from rich.table import Table

from app.cli.database import database_url
from app.core import keys as key_service
from app.core.db import transaction
from app.core.settings import get_settings

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
console = Console()


@keys_app.command("create")
def create(
    org: str = typer.Option(..., "--org", help="organisation name (created if new)"),
    name: str = typer.Option("", "--name", help="a label for the key"),
    admin: bool = typer.Option(False, "--admin", help="may also manage the organisation's keys over the API"),
) -> None:
    """Create a key for an organisation; the key is shown only once."""
    with database_url(get_settings()) as url, transaction(url) as session:
        organization = key_service.get_or_create_org(session, org)
        issued = key_service.issue_key(session, organization, name=name, admin=admin)
    console.print(f"[bold]{issued.plaintext}[/bold]")
    kind = "admin key" if admin else "key"
    console.print(f"{kind} {issued.key.id} for organisation '{org}'. Save it now: it is not shown again.")


@keys_app.command("list")
def list_(org: str | None = typer.Option(None, "--org", help="only this organisation")) -> None:
    """List keys by prefix (the secret itself is never stored)."""
    table = Table("organisation", "prefix", "name", "admin", "created", "last used", "revoked")
    table.add_column("id", no_wrap=True)  # copied into `keys revoke`, so never cut
    with database_url(get_settings()) as url, transaction(url) as session:
        for key, organization in key_service.list_keys(session, org):
            table.add_row(
                organization.name,
                key.prefix + "…",
                key.name,
                "admin" if key.is_admin else "-",
                f"{key.created_at:%Y-%m-%d}",
                f"{key.last_used_at:%Y-%m-%d}" if key.last_used_at else "-",
                f"{key.revoked_at:%Y-%m-%d}" if key.revoked_at else "-",
                key.id,
            )
    console.print(table)


@keys_app.command("revoke")
def revoke(key_id: str = typer.Argument(..., help="the key's id (key-…)")) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    with database_url(get_settings()) as url, transaction(url) as session:
        key = key_service.revoke_key(session, key_id)
    console.print(f"revoked {key.id} ({key.prefix}…)")
