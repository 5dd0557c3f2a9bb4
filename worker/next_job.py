"""What a training message does: claim the next job in fair order (`app.core.fair_queue`) and run it. The message's
own job id only rings the bell; the job run may be another organisation's."""

import structlog

from app.core.db import transaction
from app.core.fair_queue import claim_next_job
from app.core.settings import Settings
from app.core.worker_devices import Capabilities
from app.ml.base_models.registry import BaseModelRegistry
from worker.job_runner import run_job

log = structlog.get_logger()


def run_next_job(
    settings: Settings, registry: BaseModelRegistry, doorbell: str, worker: Capabilities, worker_name: str | None = None
) -> str | None:
    """Runs the next job in fair order that this `worker` (named `worker_name`) can run, woken by the message of
    job `doorbell`; the id of the job run, or None when none was waiting."""
    with transaction(settings.require("database_url")) as session:
        claimed = claim_next_job(session, settings.job_lease_seconds, worker)
    if claimed is None:
        log.info("jobs.queue.nothing_waiting", doorbell=doorbell)
        return None
    job_id, attempt = claimed
    log.info("jobs.queue.claimed", job_id=job_id, attempt=attempt, doorbell=doorbell)
    run_job(settings, registry, job_id, claimed=attempt, worker=worker_name)
    return job_id
