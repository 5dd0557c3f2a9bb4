"""Which training worker can run which job: QLoRA needs CUDA with 4-bit kernels, a GPU worker needs room for the
job's memory estimate, a worker limited to some base models runs only their jobs; and what a job no live worker can
run is told it waits for."""

import pytest

from app.core.worker_devices import Capabilities, Gpu, Needs, cannot_run, waiting_message, why_none_can_run

GIB = 2**30
CPU = Capabilities()
H200 = Capabilities([Gpu("H200", 141 * GIB)], quantization=True)
SMALL_GPU = Capabilities([Gpu("small", 8 * GIB)], quantization=True)
GPU_WITHOUT_4BIT = Capabilities([Gpu("no-bnb", 80 * GIB)], quantization=False)
ONLY_TINY = Capabilities(base_models=["tiny"])


@pytest.mark.parametrize(
    ("worker", "needs", "reason"),
    [
        (CPU, Needs("tiny", cuda=False, gpu_memory_bytes=None), None),
        (CPU, Needs("tiny", cuda=False, gpu_memory_bytes=100 * GIB), None),  # a GPU estimate: the CPU has no GPU
        (CPU, Needs("tiny", cuda=True, gpu_memory_bytes=GIB), "QLoRA needs a CUDA GPU"),
        (GPU_WITHOUT_4BIT, Needs("tiny", cuda=True, gpu_memory_bytes=GIB), "QLoRA needs a CUDA GPU"),
        (H200, Needs("tiny", cuda=True, gpu_memory_bytes=100 * GIB), None),
        (SMALL_GPU, Needs("tiny", cuda=True, gpu_memory_bytes=8 * GIB), "needs about 8.0 GiB of its 8 GiB GPU"),
        (SMALL_GPU, Needs("tiny", cuda=False, gpu_memory_bytes=7 * GIB), None),  # within 90 % of 8 GiB
        (ONLY_TINY, Needs("other", cuda=False, gpu_memory_bytes=None), "does not load base model other"),
        (ONLY_TINY, Needs("tiny", cuda=False, gpu_memory_bytes=None), None),
    ],
)
def test_a_worker_runs_only_the_jobs_it_can(worker: Capabilities, needs: Needs, reason: str | None) -> None:
    found = cannot_run(worker, needs)
    assert found is None if reason is None else reason in (found or "")


def test_a_job_waits_when_no_live_worker_can_run_it_and_says_why_for_each() -> None:
    qlora = Needs("tiny", cuda=True, gpu_memory_bytes=GIB)
    why = why_none_can_run(qlora, {"cpu@a": CPU, "cpu@b": ONLY_TINY})

    assert why == "cpu@a: QLoRA needs a CUDA GPU with 4-bit kernels; cpu@b: QLoRA needs a CUDA GPU with 4-bit kernels"
    assert why_none_can_run(qlora, {"cpu@a": CPU, "gpu@c": H200}) is None  # one that can is enough
    assert "Leave lora.quantization out" in waiting_message(why, qlora, 3600)
    assert "fails if none is within 1 h" in waiting_message(why, qlora, 3600)


def test_with_no_live_worker_only_a_job_with_special_needs_is_said_to_wait() -> None:
    assert why_none_can_run(Needs("tiny", cuda=False, gpu_memory_bytes=None), {}) is None  # any worker will do
    assert why_none_can_run(Needs("tiny", cuda=True, gpu_memory_bytes=None), {}) == "no training worker is live"
