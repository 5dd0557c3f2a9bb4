"""Repairs what a crash can leave behind, in jobs, evaluations and merged-model exports alike: work whose worker
died, and work waiting for a worker with no message in the broker. Run every minute by the maintenance worker's beat;
each pass is safe to run at any time and twice."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from sqlalchemy import Row, func, select, update
from sqlalchemy.orm import Session

from app.core import export_state, job_state
from app.core.db import transaction
from app.core.lifecycle import EVALUATIONS, JOBS, Lifecycle, Status
from app.core.queue import CUDA_TRAINING_QUEUE, TRAINING_QUEUE, enqueue_evaluation, enqueue_export, training_sender
from app.core.settings import Settings
from app.core.tables import FineTuningJob, ModelExport
from worker.broker_messages import waiting_doorbells, work_with_messages

log = structlog.get_logger()
AFTER_OUTAGE = "Sent to a worker again after the outage"
NO_MESSAGE = "The {} had no message in the broker (it was down, or lost its data); sent again"
WORKER_LOST = {"code": "worker_lost", "message": "The training worker stopped responding", "param": None}
EXPORT_WORKER_LOST = "The export's worker stopped responding, with no attempts left ({} made); ask for the export again"


@dataclass(frozen=True)
class _Kind:
    """A kind of background work as the reaper sees it: its lifecycle, how it is sent to a worker, and where what
    the reaper did is told to its owner (a job's events; an evaluation has none)."""

    noun: str
    lifecycle: Lifecycle
    enqueue: Callable[[Settings, str], None]
    add_event: Callable[..., None] | None = None

    def tell(self, session: Session, row_id: str, message: str, level: str = "info") -> None:
        if self.add_event is not None:
            self.add_event(session, row_id, message, level=level)


def _send_job(settings: Settings, job_id: str) -> None:
    """A job's doorbell, to the queue of the workers that can run it."""
    with transaction(settings.require("database_url")) as session:
        needs_cuda = bool(session.scalar(select(FineTuningJob.needs_cuda).where(FineTuningJob.id == job_id)))
    training_sender(needs_cuda)(settings, job_id)


_KINDS = (
    _Kind("job", JOBS, _send_job, job_state.add_event),
    _Kind("evaluation", EVALUATIONS, enqueue_evaluation),
)


def reap_expired_leases(settings: Settings) -> list[str]:
    """Re-queues every running job and evaluation whose lease ran out, and every export lost with its worker
    (`app.core.export_state`), while attempts remain, and fails the others with `worker_lost`; returns the ids of
    those re-queued."""
    requeued: list[tuple[Callable[[Settings, str], None], str]] = []
    with transaction(settings.require("database_url")) as session:
        for kind in _KINDS:
            for row_id, attempt in kind.lifecycle.expired(session):
                if _requeue_or_fail(session, kind, row_id, attempt, settings.max_job_attempts):
                    requeued.append((kind.enqueue, row_id))
        lost_exports = select(ModelExport.id, ModelExport.attempt).where(export_state.lost(settings))
        for export_id, attempt in session.execute(lost_exports).all():
            if _requeue_or_fail_export(session, export_id, attempt, settings.max_job_attempts):
                requeued.append((enqueue_export, export_id))
    for enqueue, row_id in requeued:
        enqueue(settings, row_id)
        log.info("reaper.requeued", id=row_id)
    return [row_id for _, row_id in requeued]


def _requeue_or_fail(session: Session, kind: _Kind, row_id: str, attempt: int, max_attempts: int) -> bool:
    """True when re-queued; both changes are fenced on the attempt whose lease ran out."""
    running = (Status.RUNNING,)
    if attempt < max_attempts:
        if not kind.lifecycle.move(session, row_id, running, Status.QUEUED, attempt, lease_expires_at=None):
            return False
        kind.tell(session, row_id, f"Worker lost; restarting the {kind.noun} (attempt {attempt + 1})")
        return True
    if kind.lifecycle.move(session, row_id, running, Status.FAILED, attempt, error=WORKER_LOST):
        kind.tell(session, row_id, "Worker lost; no attempts left", level="error")
        log.warning("reaper.worker_lost", id=row_id)
    return False


def _requeue_or_fail_export(session: Session, export_id: str, attempt: int, max_attempts: int) -> bool:
    """As `_requeue_or_fail`, for an export: its row has no lease, and no events to tell."""
    lost = (
        update(ModelExport)
        .where(ModelExport.id == export_id, ModelExport.status == Status.RUNNING, ModelExport.attempt == attempt)
        .returning(ModelExport.id)
    )
    if attempt < max_attempts:
        return session.execute(lost.values(status=Status.QUEUED, started_at=None)).first() is not None
    error = {**WORKER_LOST, "message": EXPORT_WORKER_LOST.format(attempt)}
    if session.execute(lost.values(status=Status.FAILED, error=error, finished_at=func.now())).first() is not None:
        log.warning("reaper.worker_lost", id=export_id)
    return False


def redispatch_lost(settings: Settings) -> list[str]:
    """Sends again the jobs, evaluations and exports waiting for a worker that have no message in the broker: those
    created while the broker was down, those whose message it lost (Redis restarted without its data, a purged queue),
    those given back after an outage once their `retry_at` has passed, and jobs an older version left
    `validating_files`.
    The broker is read first: work queued meanwhile has its message already.

    A training message is a doorbell (`app.core.fair_queue`): a job whose own message woke a worker that ran another
    job is served by that job's message, still waiting in the queue; so jobs are sent again only beyond the queue's
    spare doorbells, those whose own job no longer waits.

    A message taken by a worker in the instant between leaving the queue and entering `unacked` can make this send
    a duplicate, which does nothing (the work can be claimed once).
    """
    in_broker = work_with_messages(settings.require("redis_url"))
    doorbells = {queue: waiting_doorbells(settings.require("redis_url"), queue) for queue in _TRAINING_QUEUES}
    now = datetime.now(UTC)
    with transaction(settings.require("database_url")) as session:
        waiting = [
            (kind, row)
            for kind in _KINDS
            for row in kind.lifecycle.waiting_rows(session)
            if not (row.retry_at and row.retry_at > now)
        ]
        queued_exports = session.scalars(select(ModelExport.id).where(ModelExport.status == Status.QUEUED)).all()
        waiting_cuda = select(FineTuningJob.id).where(FineTuningJob.needs_cuda, FineTuningJob.status.in_(JOBS.waiting))
        cuda_jobs = set(session.scalars(waiting_cuda))
    lost = [(kind, row) for kind, row in waiting if row.id not in in_broker]
    due = _beyond_spare_doorbells(lost, waiting, doorbells, cuda_jobs)
    lost_exports = [export_id for export_id in queued_exports if export_id not in in_broker]
    for kind, row in due:
        kind.enqueue(settings, row.id)
        log.info("reaper.redispatched", id=row.id)
    for export_id in lost_exports:
        enqueue_export(settings, export_id)
        log.info("reaper.redispatched", id=export_id)
    if due:
        with transaction(settings.require("database_url")) as session:
            for kind, row in due:
                if row.status == Status.VALIDATING_FILES:
                    job_state.mark_queued(session, row.id)
                else:
                    kind.tell(session, row.id, AFTER_OUTAGE if row.retry_at else NO_MESSAGE.format(kind.noun))
    return [row.id for _, row in due] + lost_exports


_Waiting = list[tuple[_Kind, Row[tuple[str, str, datetime | None]]]]
_TRAINING_QUEUES = (TRAINING_QUEUE, CUDA_TRAINING_QUEUE)


def _beyond_spare_doorbells(
    lost: _Waiting, waiting: _Waiting, doorbells: dict[str, list[str]], cuda_jobs: set[str]
) -> _Waiting:
    """`lost` less as many jobs of each queue as there are doorbells in that queue whose own job no longer waits
    (`cuda_jobs`: the waiting jobs whose doorbells go to the CUDA queue)."""
    waiting_jobs = {row.id for kind, row in waiting if kind.lifecycle is JOBS}
    due = [(kind, row) for kind, row in lost if kind.lifecycle is not JOBS]
    for queue in _TRAINING_QUEUES:
        spare = sum(1 for job_id in doorbells[queue] if job_id not in waiting_jobs)
        lost_jobs = [
            (kind, row)
            for kind, row in lost
            if kind.lifecycle is JOBS and (row.id in cuda_jobs) == (queue == CUDA_TRAINING_QUEUE)
        ]
        due += lost_jobs[spare:]
    return due
