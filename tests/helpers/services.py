"""Real services for the tests: PostgreSQL and Redis from the machine (or LORAPORT_TEST_* URLs), and a
SeaweedFS S3 server started here. A missing service fails the run; nothing is skipped."""

import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
import redis
import torch
import uvicorn
from fastapi import FastAPI

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.api.main import create_app  # noqa: E402
from app.cli.embedded.process import free_ports  # noqa: E402
from app.cli.embedded.seaweed import SeaweedS3  # noqa: E402
from app.core.bootstrap import prepare  # noqa: E402
from app.core.db import transaction  # noqa: E402
from app.core.keys import get_or_create_org, issue_key  # noqa: E402
from app.core.settings import Settings  # noqa: E402
from app.core.storage import store_for  # noqa: E402
from tests.helpers.models import add_tiny_model  # noqa: E402
from worker.storage_sweep import missing_objects  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_ADMIN_URL = os.environ.get("LORAPORT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LORAPORT_TEST_REDIS", "redis://127.0.0.1:6379/15")
# Converted base models are kept between runs here, so only the first run pays for the GGUF conversion.
MODEL_CACHE_HOME = Path(os.environ.get("LORAPORT_TEST_HOME", ROOT / ".loraport-test"))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for this run on the real PostgreSQL server, dropped afterwards."""
    name = f"loraport_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    from app.core.db import engine_for

    engine_for(f"{base}/{name}").dispose()
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _xdist_index(worker_id: str) -> int:
    """0 for a run without xdist (`master`) or its first worker (`gw0`), 1 for `gw1` …"""
    return int(worker_id.removeprefix("gw")) if worker_id.startswith("gw") else 0


def threads_per_worker() -> int:
    """The cores each xdist worker may use, so that parallel workers do not fight over the same cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, len(os.sched_getaffinity(0)) // workers)


@pytest.fixture(scope="session")
def redis_url(worker_id: str) -> str:
    """A Redis database of this xdist worker's own (the run's base database, minus the worker's index): its queue,
    its broker messages and its workers' declared capabilities are not another worker's."""
    base, _, database = REDIS_URL.rpartition("/")
    url = f"{base}/{int(database or 0) - _xdist_index(worker_id)}"
    client = redis.Redis.from_url(url)
    client.ping()
    client.flushdb()
    return url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="loraport-s3-") as directory:
        server = SeaweedS3(Path(directory), access_key="test-access", secret_key="test-secret")
        endpoint = server.start()
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, s3_endpoint: str, tiny_model_dir: Path) -> Iterator[Settings]:
    """The run's settings, with the tiny model added beside the default one as `loraport base-models add` adds models
    (`TINY_MODEL_ID`: tests train and serve it where output quality is not what they check); after the run, the
    consistency sweep: no row may point at an object that is not there."""
    MODEL_CACHE_HOME.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads_per_worker())
    configured = Settings(
        home=MODEL_CACHE_HOME,
        database_url=database_url,
        redis_url=redis_url,
        s3_endpoint_url=s3_endpoint,
        s3_bucket=f"test-{uuid.uuid4().hex[:8]}",
        s3_access_key="test-access",
        s3_secret_key="test-secret",
        torch_threads=threads_per_worker(),
        rate_limit_per_minute=0,  # tests poll and fuzz fast; test_limits.py serves an app with a limit
        rate_limit_per_minute_per_organization=0,  # … and test_quotas.py one with a limit per organisation
        failed_auth_per_minute=0,  # fuzzing sends wrong keys from one address; test_auth_throttling.py sets a limit
    )
    prepare(configured)
    add_tiny_model(configured, tiny_model_dir)
    yield configured
    with transaction(database_url) as session:
        assert missing_objects(session, store_for(configured)) == []


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process these settings."""
    return {**os.environ, **settings.as_environment()}


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """`app` served by uvicorn on a free loopback port, in this process."""
    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def api_base_url(settings: Settings) -> Iterator[str]:
    """The real API served by uvicorn on a free loopback port, in this process."""
    with serving(create_app(settings)) as url:
        yield url


def new_org_key(settings: Settings, org_name: str, admin: bool = False) -> str:
    """A key of the organisation `org_name` (made if new); an `admin` key may also manage the organisation's keys."""
    with transaction(settings.require("database_url")) as session:
        return issue_key(session, get_or_create_org(session, org_name), admin=admin).plaintext


@pytest.fixture
def org_key(settings: Settings) -> str:
    """A key for a fresh organisation, so tests never see each other's objects."""
    return new_org_key(settings, f"org-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def admin_key(settings: Settings) -> str:
    """An admin key of a fresh organisation."""
    return new_org_key(settings, f"admin-{uuid.uuid4().hex[:10]}", admin=True)


@pytest.fixture
def other_org_key(settings: Settings) -> str:
    return new_org_key(settings, f"other-{uuid.uuid4().hex[:10]}")


def sdk_client(api_base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api_base_url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture
def client(api_base_url: str, org_key: str) -> openai.OpenAI:
    return sdk_client(api_base_url, org_key)


@pytest.fixture
def other_client(api_base_url: str, other_org_key: str) -> openai.OpenAI:
    return sdk_client(api_base_url, other_org_key)


@pytest.fixture
def http(api_base_url: str, org_key: str) -> Iterator[httpx.Client]:
    """Plain HTTP, as curl would send it."""
    with httpx.Client(base_url=api_base_url, headers={"Authorization": f"Bearer {org_key}"}, timeout=120) as c:
        yield c
