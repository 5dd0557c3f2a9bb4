"""The `loraport` command."""

import typer

from app.cli.base_models import base_models_app
from app.cli.compare import compare
from app.cli.files import files_app
from app.cli.jobs import jobs_app
from app.cli.keys import keys_app
from app.cli.models import chat, models_app
from app.cli.up import up
from app.cli.usage import usage
from app.core.settings import Settings, get_settings

REPLICA_APP = "app.serving.replica:create_replica_app"
app = typer.Typer(help="Loraport: self-hosted, OpenAI-compatible LoRA fine-tuning.", no_args_is_help=True)
app.command(help="Run the whole service on this machine (API, worker, and embedded servers).")(up)
app.add_typer(keys_app, name="keys")
app.add_typer(base_models_app, name="base-models")
app.add_typer(files_app, name="files")
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")
app.command()(chat)
app.command()(compare)
app.command()(usage)


@app.command("serve-inference")
def serve_inference(
    host: str | None = typer.Option(None, "--host", help="address to listen on (default: LORAPORT_HOST)"),
    port: int = typer.Option(8100, "--port", help="port to listen on"),
) -> None:
    """Run an inference replica: the API generates on it when LORAPORT_INFERENCE_REPLICAS lists its URL."""
    import uvicorn

    # Read with the address it listens on, so that production refuses a reachable replica without a token.
    settings = Settings(host=host) if host else get_settings()
    listen = settings.host
    if not settings.inference_replica_token and listen not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(
            f"warning: {listen}:{port} takes requests without a token; set LORAPORT_INFERENCE_REPLICA_TOKEN on the "
            "API and its replicas",
            err=True,
        )
    # Named, not imported: the replica (torch, the engine) is the serving layer's, which the CLI does not import.
    uvicorn.run(REPLICA_APP, factory=True, host=listen, port=port, log_level="info")


if __name__ == "__main__":
    app()
