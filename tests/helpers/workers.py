"""Real Celery worker processes for the tests that need them."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from app.core.db import transaction
from app.core.lifecycle import ACTIVE, Status
from app.core.queue import CUDA_TRAINING_QUEUE, producer
from app.core.settings import Settings
from app.core.tables import Evaluation, FineTuningJob, ModelExport
from tests.helpers.services import ROOT, settings_env


def forget_other_jobs(settings: Settings) -> None:
    """Jobs, evaluations and exports that other test modules created are not ours to run: their messages go, and they
    are cancelled, or failed for exports, which cannot be (else the reaper would send them to our workers again)."""
    producer(settings).control.purge()
    with producer(settings).connection_for_write() as connection:
        connection.default_channel.queue_purge(CUDA_TRAINING_QUEUE)  # `purge` empties only the default queue
    with transaction(settings.require("database_url")) as session:
        for table in (FineTuningJob, Evaluation):
            session.execute(update(table).where(table.status.in_(ACTIVE)).values(status=Status.CANCELLED))
        session.execute(update(ModelExport).where(ModelExport.status.in_(ACTIVE)).values(status=Status.FAILED))


def start_training_worker(settings: Settings, name: str | None = None, **environment: str) -> subprocess.Popen:
    """A training worker consuming from Redis, named `name` (Celery's node name); `environment` adds LORAPORT_*
    variables."""
    argv = ["-A", "worker.celery.training", "worker", "--queues", "training", "--pool", "solo"]
    return _celery(settings, [*argv, "--hostname", name] if name else argv, environment)


def start_maintenance_worker(settings: Settings, schedule: Path, **environment: str) -> subprocess.Popen:
    """The maintenance worker with its beat, running the reaper every `LORAPORT_RECONCILE_INTERVAL_SECONDS`."""
    argv = ["-A", "worker.celery.maintenance", "worker", "--queues", "maintenance", "--pool", "solo", "--beat"]
    return _celery(settings, [*argv, "--schedule", str(schedule)], environment)


def _celery(settings: Settings, argv: list[str], environment: dict[str, str]) -> subprocess.Popen:
    quiet = ["--loglevel", "WARNING", "--without-mingle", "--without-gossip", "--without-heartbeat"]
    return subprocess.Popen(
        [sys.executable, "-m", "celery", *argv, *quiet], cwd=ROOT, env=settings_env(settings) | environment
    )


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# Short leases, renewed every 2 s while a worker lives: a killed worker's work is re-queued within seconds.
FAST_LEASE = {"LORAPORT_JOB_LEASE_SECONDS": "6"}


@pytest.fixture
def maintenance(settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen]:
    """The maintenance worker, its reaper every 2 s on `FAST_LEASE` leases, once other modules' work is cancelled."""
    forget_other_jobs(settings)
    process = start_maintenance_worker(
        settings, tmp_path / "beat-schedule", LORAPORT_RECONCILE_INTERVAL_SECONDS="2", **FAST_LEASE
    )
    yield process
    stop(process)
