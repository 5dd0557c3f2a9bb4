"""Jobs and evaluations as PostgreSQL holds them, read when Prometheus scrapes (not counted in a process, which
would see only its own share and forget on restart): counts by status, and the queue per organisation.

One label value per organisation would grow with the tenants, so the queue is shown for the `TOP_ORGANIZATIONS`
organisations with the most queued work, and the rest summed as `organization="other"`."""

from collections.abc import Iterator
from datetime import datetime

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from app.core.db import session_factory
from app.core.lifecycle import Status
from app.core.tables import Evaluation, FineTuningJob

log = structlog.get_logger()

TOP_ORGANIZATIONS = 20
OTHER = "other"
_QUEUE_LABELS = ("kind", "organization")
SERIES = (
    "loraport_jobs",
    "loraport_evaluations",
    "loraport_queue_depth",
    "loraport_queue_oldest_age_seconds",
    "loraport_work_metrics_up",
)


class WorkCollector(Collector):
    def __init__(self, database_url: str) -> None:
        self._database_url = database_url

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("loraport_work_metrics_up", "1 when the jobs' figures could be read from the database")
        try:
            families = self._read()
        except SQLAlchemyError as error:
            log.warning("metrics.work.unavailable", error=type(error).__name__)
            up.add_metric([], 0)
            yield up
            return
        yield from families
        up.add_metric([], 1)
        yield up

    def _read(self) -> list[GaugeMetricFamily]:
        counts = {
            kind: GaugeMetricFamily(f"loraport_{kind}s", f"{kind.capitalize()}s by status", labels=["status"])
            for kind in ("job", "evaluation")
        }
        depth = GaugeMetricFamily(
            "loraport_queue_depth", "Jobs and evaluations queued, by kind and organisation", labels=_QUEUE_LABELS
        )
        age = GaugeMetricFamily(
            "loraport_queue_oldest_age_seconds",
            "Age of the oldest queued job or evaluation (since it was created), by kind and organisation",
            labels=_QUEUE_LABELS,
        )
        with session_factory(self._database_url)() as session, session.begin():
            now = session.scalar(select(func.now()))
            assert now is not None
            for kind, table in (("job", FineTuningJob), ("evaluation", Evaluation)):
                by_status = dict(
                    session.execute(select(table.status, func.count()).group_by(table.status)).tuples().all()
                )
                for status in Status:
                    if status != Status.VALIDATING_FILES or kind == "job":
                        counts[kind].add_metric([status.value], by_status.get(status.value, 0))
                queued = session.execute(
                    select(table.organization_id, func.count(), func.min(table.created_at))
                    .where(table.status == Status.QUEUED)
                    .group_by(table.organization_id)
                ).tuples()
                for organization, count, oldest in top_organizations(list(queued)):
                    depth.add_metric([kind, organization], count)
                    age.add_metric([kind, organization], max(0.0, (now - oldest).total_seconds()))
        return [*counts.values(), depth, age]


def top_organizations(queued: list[tuple[str, int, datetime]]) -> list[tuple[str, int, datetime]]:
    """The organisations with the most queued, and one `other` row for the rest (their sum, their oldest)."""
    queued.sort(key=lambda row: (-row[1], row[2]))
    top, rest = queued[:TOP_ORGANIZATIONS], queued[TOP_ORGANIZATIONS:]
    if rest:
        top.append((OTHER, sum(row[1] for row in rest), min(row[2] for row in rest)))
    return top
