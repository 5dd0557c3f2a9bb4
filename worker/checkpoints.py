"""A checkpoint at the end of every epoch: the adapter in S3, a row the checkpoints list shows, an event.

Each checkpoint is servable as `ft:…:ckpt-step-N`, so a user can chat with an earlier epoch.
"""

import tempfile
from pathlib import Path

from app import ids
from app.db import transaction
from app.jobs import state
from app.storage import ObjectStore, checkpoint_prefix
from app.tables import FineTuningJob, JobCheckpoint
from worker.training.trainer import EpochReport, save_adapter


def checkpoint_model_name(model_name: str, step: int) -> str:
    return f"{model_name}:ckpt-step-{step}"


class EpochCheckpoints:
    """`on_epoch_end` for `train_lora`."""

    def __init__(self, database_url: str, store: ObjectStore, job: FineTuningJob, model_name: str) -> None:
        self.database_url, self.store, self.job, self.model_name = database_url, store, job, model_name

    def on_epoch_end(self, report: EpochReport) -> None:
        prefix = checkpoint_prefix(self.job.organization_id, self.job.id, report.step)
        with tempfile.TemporaryDirectory() as directory:
            save_adapter(report.model, Path(directory))
            self.store.upload_directory(prefix, Path(directory))
        metrics = {"step": report.step, "epoch": report.epoch}
        if report.valid_loss is not None:
            metrics |= {"valid_loss": report.valid_loss, "valid_mean_token_accuracy": report.valid_mean_token_accuracy}
        with transaction(self.database_url) as session:
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
            state.add_event(session, self.job.id, f"Checkpoint saved at step {report.step} (epoch {report.epoch})")
