"""The `loraport` command."""

import typer

from app.cli.keys import keys_app
from app.cli.up import up

app = typer.Typer(help="Loraport: self-hosted, OpenAI-compatible LoRA fine-tuning.", no_args_is_help=True)
app.command(help="Run the whole service on this machine (API, worker, and embedded servers).")(up)
app.add_typer(keys_app, name="keys")


if __name__ == "__main__":
    app()
