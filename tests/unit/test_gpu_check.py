"""The GPU check, run on the CPU with tiny sizes, so that it still runs when a GPU host comes; and what it imports,
against the wheels that travel with it."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--device", "cpu", "--shape", "tiny", "--steps", "4", "--batch-size", "2", "--seq-len", "64", "--rows", "6",
        "--prompt-tokens", "16", "--new-tokens", "16", "--check-tokens", "12"]  # fmt: skip


def _name(requirement: str) -> str:
    return canonicalize_name(Requirement(requirement).name)


def _on_the_host() -> set[str]:
    """What a host with torch and accelerate has: them and what they require here, transitively."""
    host, waiting = set(), ["torch", "accelerate"]
    while waiting:
        name = waiting.pop()
        if name not in host:
            host.add(name)
            for line in importlib.metadata.requires(name) or []:
                requirement = Requirement(line)
                if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                    waiting.append(canonicalize_name(requirement.name))
    return host


def _site_of(distributions: set[str], directory: Path) -> Path:
    """A folder holding only these installed distributions (links to their files), as on the GPU host."""
    directory.mkdir()
    for name in distributions:
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:  # bitsandbytes: CUDA hosts only
            continue
        for top in {Path(str(file)).parts[0] for file in distribution.files or []} - {".."}:
            source = Path(str(distribution.locate_file(top)))
            if source.exists() and not (directory / top).exists():
                (directory / top).symlink_to(source)
    return directory


def test_the_gpu_check_passes_on_the_cpu_with_only_what_travels_with_it(tmp_path):
    wheels = {_name(line) for line in (ROOT / "scripts/gpu-wheels.txt").read_text().splitlines() if line[:1].isalpha()}
    site = _site_of(wheels | _on_the_host(), tmp_path / "site")
    run = subprocess.run(
        [sys.executable, "-S", "-m", "bench.gpu_check", *TINY],  # -S: none of this environment's site-packages
        cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT}:{site}"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert run.returncode == 0, run.stdout + run.stderr
    verdicts = [line.split()[0] for line in run.stdout.splitlines() if line.startswith(("PASS", "FAIL", "SKIP"))]
    assert verdicts == ["PASS", "PASS", "PASS", "PASS", "SKIP"]  # QLoRA needs CUDA
    assert "generated tokens/s" in run.stdout and "trained tokens/s" in run.stdout
