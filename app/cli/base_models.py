"""`loraport base-models add|list|remove`: the base models of the deployment, against its database and object
store (or the embedded ones under LORAPORT_HOME while `make up` runs)."""

import importlib
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from app.cli.database import deployment
from app.core import base_model_records
from app.core.db import transaction
from app.core.settings import get_settings
from app.core.storage import store_for

base_models_app = typer.Typer(help="Add, list and remove base models.", no_args_is_help=True)
console = Console()
# Named, not imported: adding converts and inspects models with torch and transformers, which the CLI does not
# load for its other commands.
ADDING = "app.ml.base_models.adding"


@base_models_app.command("add")
def add(
    model_id: str = typer.Argument(..., help="the id jobs and requests will use, e.g. gemma-3-270m"),
    source: str = typer.Argument(..., help="a .gguf file, a transformers model directory, or s3://bucket/prefix"),
    chat_template: str | None = typer.Option(
        None, "--chat-template", help="chatml, llama3, gemma, mistral, phi3, or a Jinja file (default: the model's own)"
    ),
    learning_rate: float | None = typer.Option(
        None, "--learning-rate", min=0, help="at multiplier 1 and batch 8 (default: from the model's size)"
    ),
    lora_rank: int = typer.Option(16, "--lora-rank", min=1, max=256, help="the default rank of its jobs' adapters"),
    max_seq_length: int | None = typer.Option(None, "--max-seq-length", min=16, help="longest training example"),
    quantization: str | None = typer.Option(None, "--quantization", help="4bit: train with QLoRA (CUDA hosts)"),
) -> None:
    """Convert if needed, check, store and record a base model: every API process and worker can use it within
    seconds."""
    adding: Any = importlib.import_module(ADDING)
    options = adding.AddOptions(chat_template, learning_rate, lora_rank, max_seq_length, quantization)
    with deployment(get_settings()) as settings:
        try:
            found = adding.add_base_model(settings, model_id, source, options, say=lambda step: console.print(step))
        except adding.BaseModelRefused as error:
            console.print(f"[red]refused:[/red] {error}")
            raise typer.Exit(1) from None
    console.print(f"[bold green]added {model_id}[/bold green]")
    template = {"model": "the model's own", "given": f"{chat_template}", "default": "Loraport's default (none found)"}
    for name, value in [
        ("architecture", found.architecture),
        ("parameters", _count(found.parameters)),
        ("context length", f"{found.context_length:,} tokens"),
        ("chat template", template[found.chat_template_source]),
        ("end of turn", found.end_of_turn),
        ("LoRA targets", ", ".join(found.lora_targets)),
        ("learning rate", f"{found.learning_rate:.2g} (at multiplier 1, batch 8)"),
        ("max training length", f"{found.max_seq_length:,} tokens"),
    ]:
        console.print(f"  {name:<20} {value}", highlight=False)


@base_models_app.command("list")
def list_() -> None:
    """The base models added to this deployment (besides the built-in default one)."""
    table = Table("id", "architecture", "parameters", "context", "chat template", "LoRA targets", "added")
    with deployment(get_settings()) as settings, transaction(settings.require("database_url")) as session:
        for record in base_model_records.all_records(session):
            table.add_row(
                record.id,
                record.architecture,
                _count(record.parameters),
                f"{record.context_length:,}",
                record.chat_template_source,
                ", ".join(record.lora_target_modules),
                f"{record.created_at:%Y-%m-%d %H:%M}",
            )
    console.print(table)


@base_models_app.command("remove")
def remove(
    model_id: str = typer.Argument(..., help="the base model's id"),
    force: bool = typer.Option(False, "--force", help="remove it although fine-tuned models or jobs use it"),
) -> None:
    """Remove a base model and its stored weights; refused while fine-tuned models or jobs of it exist."""
    with deployment(get_settings()) as settings:
        with transaction(settings.require("database_url")) as session:
            if base_model_records.find(session, model_id) is None:
                console.print(f"[red]no base model {model_id!r}[/red] (`loraport base-models list` shows them)")
                raise typer.Exit(1)
            models, jobs = base_model_records.dependants(session, model_id)
            if (models or jobs) and not force:
                console.print(
                    f"[red]refused:[/red] {models} fine-tuned model(s) and {jobs} unfinished job(s) use {model_id}; "
                    "they stop working without it. Delete them first, or pass --force"
                )
                raise typer.Exit(1)
            base_model_records.remove(session, model_id)
        # After the commit: from now on nobody resolves it, so its weights can go.
        store_for(settings).delete_prefix(base_model_records.model_prefix(model_id))
    left = f" ({models} fine-tuned model(s) and {jobs} job(s) are left without it)" if models or jobs else ""
    console.print(f"removed {model_id}{left}")


def _count(parameters: int) -> str:
    """134.5 M, 7.2 B; a tiny test model's exact count."""
    for unit, size in (("B", 1e9), ("M", 1e6)):
        if parameters >= size:
            return f"{parameters / size:,.1f} {unit}"
    return f"{parameters:,}"
