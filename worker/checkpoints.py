"""A checkpoint at the end of every epoch: the adapter in S3, a row the checkpoints list shows, an event, and
the state a new worker resumes from if this one dies.

Each checkpoint is servable as `ft:…:ckpt-step-N`, so a user can chat with an earlier epoch. The training state
(optimizer, scheduler, RNG: about three times the adapter's size) is written before the row, so the latest row
always has one, and only the latest state is kept.
"""

import tempfile
from pathlib import Path

from sqlalchemy import select

from app.core import ids, job_state
from app.core.db import transaction
from app.core.lifecycle import JOBS
from app.core.storage import ObjectStore, checkpoint_prefix, training_state_key
from app.core.tables import FineTuningJob, JobCheckpoint
from worker.training.state import TrainingState
from worker.training.trainer import EpochReport, save_adapter


def checkpoint_model_name(model_name: str, step: int) -> str:
    return f"{model_name}:ckpt-step-{step}"


class EpochCheckpoints:
    """`on_epoch_end` for `train_lora`, writing for the job's attempt `job.attempt` only: once the reaper has given
    the job to another attempt, this one uploads, records and deletes nothing (its steps stop it soon after)."""

    def __init__(
        self, database_url: str, store: ObjectStore, job: FineTuningJob, model_name: str, lease_seconds: int = 90
    ) -> None:
        self.database_url, self.store, self.job, self.model_name = database_url, store, job, model_name
        self.attempt, self.lease_seconds = job.attempt, lease_seconds
        self._state_step: int | None = None  # the step of the state this run saved last

    def resuming_from(self, step: int) -> None:
        """The state of `step` exists already (this run resumed from it); it goes once a newer one is saved."""
        self._state_step = step

    def _holds(self) -> bool:
        """Whether the job is still this attempt's (renewing its lease on the way): a stale attempt uploads nothing."""
        with transaction(self.database_url) as session:
            return JOBS.renew_lease(session, self.job.id, self.lease_seconds, self.attempt)

    def on_epoch_end(self, report: EpochReport) -> None:
        if not self._holds():
            return
        prefix = checkpoint_prefix(self.job.organization_id, self.job.id, report.step)
        with tempfile.TemporaryDirectory() as directory:
            save_adapter(report.model, Path(directory))
            self.store.upload_directory(prefix, Path(directory))
        organization_id, job_id = self.job.organization_id, self.job.id
        self.store.put_bytes(training_state_key(organization_id, job_id, report.step), report.state.to_bytes())
        metrics: dict[str, float | None] = {"step": report.step, "epoch": report.epoch}
        if report.valid_loss is not None:
            metrics |= {
                "valid_loss": report.valid_loss,
                f"valid_{report.accuracy_name}": report.valid_mean_token_accuracy,
            }
        with transaction(self.database_url) as session:
            if not JOBS.renew_lease(session, self.job.id, self.lease_seconds, self.attempt):
                return
            session.add(
                JobCheckpoint(
                    id=ids.checkpoint_id(),
                    job_id=self.job.id,
                    step_number=report.step,
                    metrics=metrics,
                    fine_tuned_model_checkpoint=checkpoint_model_name(self.model_name, report.step),
                    storage_prefix=prefix,
                )
            )
            job_state.add_event(session, self.job.id, f"Checkpoint saved at step {report.step} (epoch {report.epoch})")
        if self._state_step is not None:
            self.store.delete(training_state_key(organization_id, job_id, self._state_step))
        self._state_step = report.step


def latest_training_state(
    database_url: str, store: ObjectStore, job: FineTuningJob
) -> tuple[JobCheckpoint, TrainingState] | None:
    """The newest checkpoint of `job` with the state saved beside it, to resume from; None to start afresh."""
    with transaction(database_url) as session:
        checkpoint = session.scalar(
            select(JobCheckpoint).where(JobCheckpoint.job_id == job.id).order_by(JobCheckpoint.step_number.desc())
        )
    if checkpoint is None:
        return None
    key = training_state_key(job.organization_id, job.id, checkpoint.step_number)
    if not store.exists(key):
        return None
    return checkpoint, TrainingState.from_bytes(store.read_bytes(key))
