"""The embedded PostgreSQL, Redis and S3 servers: real processes, data that survives a restart, nothing left
running after stop. A missing binary fails these tests."""

import json
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
import redis
import sqlalchemy as sa
from botocore.config import Config
from celery import Celery

from app.cli.embedded.postgres import EmbeddedPostgres
from app.cli.embedded.process import ServerError, ServerProcess
from app.cli.embedded.redis import EmbeddedRedis
from app.cli.embedded.seaweed import SeaweedS3


def family(process: ServerProcess | None) -> list[psutil.Process]:
    """The server process and everything it started."""
    assert process is not None and process.pid is not None
    leader = psutil.Process(process.pid)
    return [leader, *leader.children(recursive=True)]


def assert_gone(processes: list[psutil.Process]) -> None:
    alive = [p.pid for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def test_postgres_serves_sql_and_keeps_tables_across_restart(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "postgres")
    url = server.start()
    assert url.startswith("postgresql+psycopg://") and "/loraport?" in url
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
        conn.execute(sa.text("CREATE TABLE kept (note text)"))
        conn.execute(sa.text("INSERT INTO kept VALUES ('before restart')"))
    engine.dispose()
    processes = family(server.process)
    server.stop()
    assert_gone(processes)

    assert server.start() == url
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT note FROM kept")).scalar() == "before restart"
    engine.dispose()
    processes = family(server.process)
    server.stop()
    assert_gone(processes)


def test_redis_serves_redis_py_and_celery_and_keeps_keys_across_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    celery_url = server.start()
    assert celery_url.startswith("redis+socket:///") and server.client_url.startswith("unix:///")
    with redis.Redis.from_url(server.client_url) as client:
        assert client.ping()
        client.set("kept", "before restart")
    with Celery(broker=celery_url).connection_for_write() as conn:
        queue = conn.SimpleQueue("probe")
        queue.put({"job": "ftjob-1"})
        assert queue.get(timeout=5).payload == {"job": "ftjob-1"}
        queue.close()
    processes = family(server.process)
    server.stop()
    assert_gone(processes)

    server.start()
    with redis.Redis.from_url(server.client_url) as client:
        assert client.get("kept") == b"before restart"
    processes = family(server.process)
    server.stop()
    assert_gone(processes)


def s3_client(endpoint: str, secret_key: str = "test-secret") -> Any:  # botocore clients are built at run time
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test-access",
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(request_checksum_calculation="when_required", response_checksum_validation="when_required"),
    )


def test_s3_accepts_only_its_keys_and_keeps_objects_across_restart(tmp_path: Path) -> None:
    server = SeaweedS3(tmp_path / "s3", access_key="test-access", secret_key="test-secret")
    endpoint = server.start()
    client = s3_client(endpoint)
    client.create_bucket(Bucket="loraport")
    client.put_object(Bucket="loraport", Key="org-1/adapter.safetensors", Body=b"weights")
    with pytest.raises(client.exceptions.ClientError, match="SignatureDoesNotMatch"):
        s3_client(endpoint, secret_key="wrong").list_buckets()
    processes = family(server.process)
    server.stop()
    assert_gone(processes)

    assert server.start() == endpoint  # the same ports while they are free
    body = s3_client(endpoint).get_object(Bucket="loraport", Key="org-1/adapter.safetensors")["Body"].read()
    assert body == b"weights"
    processes = family(server.process)
    server.stop()
    assert_gone(processes)


def test_s3_data_is_for_this_user_and_only_through_the_s3_keys(tmp_path: Path) -> None:
    """Audit #16: other local users can neither list the data directory nor fetch objects past the S3 keys through
    the filer's or the volume server's HTTP ports on 127.0.0.1."""
    server = SeaweedS3(tmp_path / "s3", access_key="test-access", secret_key="test-secret")
    endpoint = server.start()
    try:
        client = s3_client(endpoint)
        client.create_bucket(Bucket="loraport")
        client.put_object(Bucket="loraport", Key="org-1/adapter.safetensors", Body=b"weights")
        (volume,) = [row for row in _http(server, "master", "/dir/lookup?volumeId=1")["locations"]]

        assert stat.S_IMODE((tmp_path / "s3").stat().st_mode) == 0o700
        with pytest.raises(urllib.error.HTTPError) as filer:
            _http(server, "filer", "/buckets/loraport/org-1/adapter.safetensors")
        assert filer.value.code == 404  # the filer's HTTP API is off
        with pytest.raises(urllib.error.HTTPError) as unsigned:
            urllib.request.urlopen(f"http://{volume['url']}/1,01", timeout=5)
        assert unsigned.value.code == 401  # the volume server serves signed requests only
        assert client.get_object(Bucket="loraport", Key="org-1/adapter.safetensors")["Body"].read() == b"weights"
    finally:
        server.stop()


def _http(server: SeaweedS3, name: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.ports[name]}{path}", timeout=5) as answer:
        return json.load(answer)


def test_s3_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = SeaweedS3(tmp_path / "s3", access_key="a", secret_key="b", port=port)
        with pytest.raises(ServerError, match=f"S3 port {port} is in use"):
            server.start()


def test_pid_file_of_a_dead_server_is_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "redis.pid").write_text(dead.stdout)
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    server.stop()


def test_second_server_on_the_same_data_is_refused(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path / "redis")
    first.start()
    try:
        with pytest.raises(ServerError, match=r"Redis from an earlier run is still running .* \(pid \d+\)"):
            EmbeddedRedis(tmp_path / "redis").start()
    finally:
        first.stop()


def test_servers_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from app.cli.embedded.postgres import EmbeddedPostgres;"
        "s = EmbeddedPostgres(Path(sys.argv[1])); s.start(); print(s.process.pid, flush=True); sys.stdin.read()"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "postgres")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert parent.stdout is not None
    leader = psutil.Process(int(parent.stdout.readline()))
    processes = [leader, *leader.children(recursive=True)]
    parent.kill()
    parent.wait()
    psutil.wait_procs(processes, timeout=10)
    assert_gone(processes)
