"""Embedded servers for whichever of PostgreSQL, Redis and S3 the settings give no URL for."""

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from app.cli.embedded.postgres import EmbeddedPostgres
from app.cli.embedded.process import ServerProcess, private_directory
from app.cli.embedded.redis import EmbeddedRedis
from app.cli.embedded.seaweed import SeaweedS3
from app.core.settings import Settings


class EmbeddedServer(Protocol):
    process: ServerProcess | None

    def start(self) -> str: ...

    def stop(self) -> None: ...


@dataclass
class EmbeddedServices:
    settings: Settings  # with every URL filled in
    processes: list[ServerProcess] = field(default_factory=list)  # the servers started, to watch


@contextmanager
def embedded_services(settings: Settings) -> Iterator[EmbeddedServices]:
    """Starts a server under `settings.home` for each URL setting that is None; stops them, newest first.

    Started in the order S3, PostgreSQL, Redis, so they stop as Redis, PostgreSQL, S3.
    """
    home = settings.home.expanduser().resolve()
    private_directory(home)  # every tenant's data: not for other local users
    servers: dict[str, Callable[[], EmbeddedServer]] = {
        "s3_endpoint_url": lambda: SeaweedS3(home / "s3", settings.s3_access_key, settings.s3_secret_key),
        "database_url": lambda: EmbeddedPostgres(home / "postgres"),
        "redis_url": lambda: EmbeddedRedis(home / "redis"),
    }
    started = EmbeddedServices(settings)
    update: dict[str, str] = {}
    with ExitStack() as stack:
        for name, make in servers.items():
            if getattr(settings, name) is not None:
                continue
            server = make()
            stack.callback(server.stop)  # before start(): a half-started server is stopped too
            update[name] = server.start()
            assert server.process is not None
            started.processes.append(server.process)
        started.settings = settings.model_copy(update={"home": home, **update})
        yield started
