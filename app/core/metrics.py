"""Every Prometheus metric of every process, defined here once (README "Metrics" lists them), and the endpoint that
serves them: never on the public port, always on one an operator binds to an internal address.

Several processes behind one port (`uvicorn --workers N`) share their figures through prometheus-client's
multiprocess mode: set PROMETHEUS_MULTIPROC_DIR to an empty directory before they start; each writes its values
there, and whichever of them holds the metrics port serves the sum."""

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server
from prometheus_client.registry import Collector

log = structlog.get_logger()

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# Why a request was refused before it was served (`REQUESTS_REFUSED`): a size or quota limit, a rate limit of a key,
# an organisation or an address, or admission to work that is full (generation slots, upload validation).
Refusal = Literal["limit", "rate_limit", "admission"]

# API processes.
HTTP_REQUEST_DURATION = Histogram(
    "loraport_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template (never the raw path) and status code",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
REQUESTS_REFUSED = Counter(
    "loraport_requests_refused_total", "Requests refused by a limit, a rate limit or admission", ["reason"]
)
UPLOAD_BYTES = Counter(
    "loraport_upload_bytes_total", "Bytes of uploaded files received, by route kind (file or upload part)", ["kind"]
)

# Generation (the engine, in the API process or an inference replica).
TIME_TO_FIRST_TOKEN = Histogram(
    "loraport_generation_time_to_first_token_seconds",
    "From a generation's arrival at the engine to its first token",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
GENERATION_TOKENS_PER_SECOND = Histogram(
    "loraport_generation_tokens_per_second",
    "Tokens per second of one finished generation row, after its first token",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
GENERATED_TOKENS = Counter("loraport_generated_tokens_total", "Tokens generated, all rows together")
DECODE_STEP_ROWS = Histogram(
    "loraport_decode_step_rows", "Rows decoded together in one decode step", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
ADAPTER_CACHE_HITS = Counter("loraport_adapter_cache_hits_total", "Generations whose adapter was already in memory")
ADAPTER_CACHE_MISSES = Counter("loraport_adapter_cache_misses_total", "Generations whose adapter had to be loaded")
ADAPTER_LOAD_SECONDS = Histogram(
    "loraport_adapter_load_seconds",
    "Time to load an adapter into memory (fetched from storage where not on disk)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
GENERATION_SLOTS_IN_USE = Gauge(
    "loraport_generation_slots_in_use",
    "Generation rows running in the engine, by base model",
    ["model"],
    multiprocess_mode="livesum",
)

# Training workers.
TRAINING_STEP_SECONDS = Histogram(
    "loraport_training_step_seconds",
    "Time of one optimizer step (forward, backward and update)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TRAINING_TOKENS = Counter("loraport_training_tokens_total", "Tokens trained on (rate() of it: tokens per second)")
TRAINING_TOKENS_PER_SECOND = Gauge(
    "loraport_training_tokens_per_second", "Tokens per second of the latest step", multiprocess_mode="mostrecent"
)
EVALUATION_SECONDS = Histogram(
    "loraport_evaluation_seconds",
    "Time of one evaluation run, by kind (a job's evaluation after training, or POST /v1/evaluations)",
    ["kind"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
)
WORK_FINISHED = Counter(
    "loraport_work_finished_total",
    "Jobs and evaluations a worker finished, by kind (job, evaluation) and status (succeeded, failed, cancelled)",
    ["kind", "status"],
)
OUTAGES_SURVIVED = Counter(
    "loraport_outages_survived_total",
    "Outages of a service (the database, object storage, the broker) that work was given back or went on through",
    ["service"],
)
DEFINED: tuple[Counter | Gauge | Histogram, ...] = (
    HTTP_REQUEST_DURATION, REQUESTS_REFUSED, UPLOAD_BYTES, TIME_TO_FIRST_TOKEN, GENERATION_TOKENS_PER_SECOND,
    GENERATED_TOKENS, DECODE_STEP_ROWS, ADAPTER_CACHE_HITS, ADAPTER_CACHE_MISSES, ADAPTER_LOAD_SECONDS,
    GENERATION_SLOTS_IN_USE, TRAINING_STEP_SECONDS, TRAINING_TOKENS, TRAINING_TOKENS_PER_SECOND, EVALUATION_SECONDS,
    WORK_FINISHED, OUTAGES_SURVIVED,
)  # fmt: skip


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_DIR_VARIABLE))


def registry(extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """What a metrics endpoint serves: this process's metrics (in multiprocess mode, every process's, summed), and
    `extra` (collectors that read their figures when scraped)."""
    served = CollectorRegistry()
    if multiprocess_mode():
        multiprocess.MultiProcessCollector(served)  # type: ignore[no-untyped-call]
    else:
        served.register(REGISTRY)
    for collector in extra:
        served.register(collector)
    return served


@dataclass
class MetricsServer:
    server: WSGIServer
    thread: threading.Thread

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(host: str, port: int, extra: Iterable[Collector] = ()) -> MetricsServer | None:
    """Serves `/metrics` on host:port in a thread. None when the port is taken: in multiprocess mode another process
    of the same group serves the same sum (uvicorn's workers all try; one wins)."""
    try:
        server, thread = start_http_server(port, addr=host, registry=registry(extra))
    except OSError as error:
        log.info("metrics.port_taken", host=host, port=port, error=str(error))
        return None
    log.info("metrics.serving", url=f"http://{host}:{port}/metrics")
    return MetricsServer(server, thread)


def process_exited() -> None:
    """In multiprocess mode, drops this process's live gauges from the sum (its counters stay counted)."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def series_names() -> set[str]:
    """Every series name the metrics above show in a scrape (a counter's `_total`, a histogram's `_bucket`, `_count`
    and `_sum`), for the README and for alert rules to be checked against."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {
        family.name + suffix for metric in DEFINED for family in metric.describe() for suffix in suffixes[family.type]
    }
