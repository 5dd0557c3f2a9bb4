"""The database (and object store) a CLI command talks to: the configured ones, or the embedded ones under
LORAPORT_HOME, used while `loraport up` runs them and started for the command otherwise."""

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from app.cli.embedded.postgres import EmbeddedPostgres
from app.cli.embedded.seaweed import SeaweedS3
from app.core.settings import Settings


@contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    if settings.database_url:
        yield settings.database_url
        return
    server = EmbeddedPostgres(settings.home / "postgres")
    if server.is_running():  # `loraport up` owns it: use it, leave it running
        yield server.url
        return
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@contextmanager
def deployment(settings: Settings) -> Iterator[Settings]:
    """`settings` with the database and the object store filled in."""
    with ExitStack() as stack:
        url = stack.enter_context(database_url(settings))
        endpoint = settings.s3_endpoint_url
        if not endpoint:
            server = SeaweedS3(settings.home.expanduser() / "s3", settings.s3_access_key, settings.s3_secret_key)
            endpoint = server.running_url()
            if endpoint is None:
                stack.callback(server.stop)
                endpoint = server.start()
        yield settings.model_copy(update={"database_url": url, "s3_endpoint_url": endpoint})
