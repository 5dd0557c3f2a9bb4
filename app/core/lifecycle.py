"""The statuses of background work (fine-tuning jobs and evaluations), one set for both."""

from enum import StrEnum


class Status(StrEnum):
    VALIDATING_FILES = "validating_files"  # jobs only: created, not yet with the broker
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (Status.VALIDATING_FILES, Status.QUEUED, Status.RUNNING)
FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)
