"""When a running merged-model export counts as lost with its worker: the API re-queues such an export when it is asked
for again, and the reaper re-queues it by itself. Reckoned by the database's clock, as leases are."""

from datetime import timedelta

from sqlalchemy import ColumnElement, func

from app.core.settings import Settings
from app.core.tables import ModelExport

# A running export not finished this long after its start was lost with its worker: Celery's hard time limit has
# killed any task by then.
_LOST_AFTER_GRACE = timedelta(minutes=10)


def lost(settings: Settings) -> ColumnElement[bool]:
    """The running exports begun longer ago than the task time limit and its grace."""
    limit = timedelta(seconds=settings.job_time_limit_seconds) + _LOST_AFTER_GRACE
    return (ModelExport.status == "running") & (ModelExport.started_at < func.now() - limit)
