"""A Celery worker's `/metrics` on LORAPORT_METRICS_HOST:LORAPORT_WORKER_METRICS_PORT, from when the worker is
ready until it shuts down. Workers run the `solo` pool (one job per GPU), so tasks count in the process that serves
them; a prefork pool would need multiprocess mode (PROMETHEUS_MULTIPROC_DIR), as the API's workers have."""

from celery.signals import worker_ready, worker_shutdown

from app.core import metrics
from app.core.settings import get_settings

_served: list[metrics.MetricsServer] = []


def serve_worker_metrics() -> None:
    """Connects the signals that start and stop the endpoint; each Celery app module calls it once."""
    worker_ready.connect(_start, weak=False, dispatch_uid="loraport.worker_metrics.start")
    worker_shutdown.connect(_stop, weak=False, dispatch_uid="loraport.worker_metrics.stop")


def _start(**_: object) -> None:
    settings = get_settings()
    if settings.worker_metrics_port is not None and not _served:
        server = metrics.serve(settings.metrics_host, settings.worker_metrics_port)
        if server is not None:
            _served.append(server)


def _stop(**_: object) -> None:
    while _served:
        _served.pop().stop()
    metrics.process_exited()
