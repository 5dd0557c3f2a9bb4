"""The database a CLI command talks to: the configured one, or the embedded one under LORAPORT_HOME."""

from collections.abc import Iterator
from contextlib import contextmanager

from app.cli.embedded.postgres import EmbeddedPostgres
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
