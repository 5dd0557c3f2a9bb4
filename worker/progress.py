"""What running work tells the database, and hears from it: a trainer's metrics events and lease renewals, and
whether the work was cancelled meanwhile."""

import time
from datetime import UTC, datetime, timedelta

from celery.exceptions import SoftTimeLimitExceeded

from app.core import job_state
from app.core.db import transaction
from app.core.lifecycle import JOBS, Lifecycle
from app.core.settings import Settings
from worker.training.trainer import StepReport

_STATUS_POLL_S = 2.0


def time_limit(settings: Settings) -> float:
    """The `time.monotonic()` past which work started now has run too long (`job_time_limit_seconds`)."""
    return time.monotonic() + settings.job_time_limit_seconds


class JobProgress:
    """Callbacks for `train_lora`: `on_step` records metrics and renews the lease of this attempt, `should_stop` sees
    cancels (and re-queues for another attempt); a renewal is also the freshest answer to that."""

    def __init__(
        self,
        database_url: str,
        job_id: str,
        attempt: int,
        lease_seconds: int,
        deadline: float | None = None,
        max_metrics_events: int = 2000,
        report_share: float = 0.0,
    ) -> None:
        self.database_url = database_url
        self.job_id, self.attempt = job_id, attempt
        self.lease_seconds, self.max_metrics_events = lease_seconds, max_metrics_events
        self._cancel = CancelCheck(database_url, JOBS, job_id, attempt, deadline)
        self._started_at = time.monotonic()
        self._report_share = report_share  # the report after training takes this share of the training's time
        self._steps_before: int | None = None  # steps done by an earlier attempt this one resumed from

    def on_step(self, report: StepReport) -> None:
        message = f"Step {report.step}/{report.total_steps}: training loss={report.train_loss:.4f}"
        data: dict = {
            "step": report.step,
            "total_steps": report.total_steps,
            "epoch": report.epoch,
            "train_loss": report.train_loss,
            "learning_rate": report.learning_rate,
        }
        data[f"train_{report.accuracy_name}"] = report.train_mean_token_accuracy
        data |= {f"train_{name}": value for name, value in report.train_metrics.items()}
        if report.valid_loss is not None:
            message += f", validation loss={report.valid_loss:.4f}"
            data["valid_loss"] = report.valid_loss
            data[f"valid_{report.accuracy_name}"] = report.valid_mean_token_accuracy
            data |= {f"valid_{name}": value for name, value in (report.valid_metrics or {}).items()}
        with transaction(self.database_url) as session:
            held = JOBS.renew_lease(
                session, self.job_id, self.lease_seconds, self.attempt, estimated_finish=self._estimated_finish(report)
            )
            if held:
                job_state.add_metrics_event(session, self.job_id, message, data, self.max_metrics_events)
        self._cancel.saw(held)

    def _estimated_finish(self, report: StepReport) -> datetime:
        """Now plus the remaining steps at this attempt's average pace so far, and the report that follows them."""
        if self._steps_before is None:
            self._steps_before = report.step - 1
        per_step = (time.monotonic() - self._started_at) / (report.step - self._steps_before)
        remaining = report.total_steps - report.step + self._report_share * report.total_steps
        return datetime.now(UTC) + timedelta(seconds=per_step * remaining)

    def should_stop(self) -> bool:
        """True once the job was cancelled, or is no longer this attempt's; raises `SoftTimeLimitExceeded` once it
        has run past its time limit."""
        return self._cancel.should_stop()


class CancelCheck:
    """`should_stop` for work without steps that renew its lease (an evaluation): True once `attempt` no longer runs
    the row (it was cancelled, or re-queued for another attempt), asked of the database at most every 2 s.

    Past `deadline` (a `time.monotonic()`) it raises Celery's `SoftTimeLimitExceeded`, as Celery's own soft limit
    does in a prefork worker: the `solo` pool enforces no time limit, so the work checks its own.
    """

    def __init__(
        self, database_url: str, lifecycle: Lifecycle, row_id: str, attempt: int, deadline: float | None = None
    ) -> None:
        self.database_url, self.lifecycle, self.row_id, self.attempt = database_url, lifecycle, row_id, attempt
        self.deadline = deadline
        self._held = True
        self._checked_at = time.monotonic()

    def should_stop(self) -> bool:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise SoftTimeLimitExceeded(f"past the time limit of {self.row_id}")
        if time.monotonic() - self._checked_at > _STATUS_POLL_S:
            with transaction(self.database_url) as session:
                self.saw(self.lifecycle.holds(session, self.row_id, self.attempt))
        return not self._held

    def saw(self, held: bool) -> None:
        """What a write fenced on the attempt just learnt: whether the attempt still runs the row."""
        self._held, self._checked_at = held, time.monotonic()
