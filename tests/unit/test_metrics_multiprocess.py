"""Several API processes behind one port (uvicorn --workers) in prometheus-client's multiprocess mode: whichever
serves the port shows their counters summed, and a process that exited leaves the live gauges."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.core import metrics, work_metrics

ROOT = Path(__file__).resolve().parents[2]

# One API process: refuses `refused` requests, runs `slots` generation rows, and exits cleanly when `exits`.
PROCESS = """
import sys
from app.core import metrics, work_metrics
refused, slots, exits = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "exits"
metrics.REQUESTS_REFUSED.labels("admission").inc(refused)
metrics.GENERATION_SLOTS_IN_USE.labels("tiny").set(slots)
if exits:
    metrics.process_exited()
"""


def run_process(directory: Path, refused: int, slots: int, exits: bool) -> None:
    env = {**os.environ, metrics.MULTIPROC_DIR_VARIABLE: str(directory), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", PROCESS, str(refused), str(slots), "exits" if exits else "stays"]
    subprocess.run(argv, env=env, check=True, cwd=ROOT)


def test_processes_sharing_a_directory_are_served_summed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_process(tmp_path, refused=2, slots=3, exits=False)
    run_process(tmp_path, refused=5, slots=4, exits=True)
    monkeypatch.setenv(metrics.MULTIPROC_DIR_VARIABLE, str(tmp_path))

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry()).decode())
        for sample in family.samples
    }

    assert samples[("loraport_requests_refused_total", (("reason", "admission"),))] == 7
    # the process that exited no longer holds its rows; the gauge is not per process either (`livesum`)
    assert samples[("loraport_generation_slots_in_use", (("model", "tiny"),))] == 3


def test_every_metric_is_named_loraport_and_listed_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for metric in metrics.DEFINED:
        (family,) = metric.describe()
        name = f"{family.name}_total" if family.type == "counter" else family.name  # as the README and a scrape say
        assert name.startswith("loraport_")
        assert f"`{name}`" in readme, f"{name} is not in README's Metrics section"
    for name in work_metrics.SERIES:
        assert f"`{name}`" in readme, f"{name} is not in README's Metrics section"
