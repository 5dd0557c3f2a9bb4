"""The torch engine's CPU threads: every core but one unless configured, so the API's own threads find a core."""

import os

import torch

from app.core.settings import Settings
from app.serving.engine import InferenceEngine
from app.serving.factory import build_local_backend, rows_per_organization_when_shared


def test_the_torch_engine_leaves_a_core_to_the_processes_other_threads(registry, tmp_path):
    s3 = {"s3_endpoint_url": "http://127.0.0.1:1", "s3_access_key": "key", "s3_secret_key": "secret"}  # not reached
    before = torch.get_num_threads()
    try:
        backend = build_local_backend(Settings(home=tmp_path, **s3), registry)
        assert isinstance(backend, InferenceEngine)
        assert torch.get_num_threads() == max(1, len(os.sched_getaffinity(0)) - 1)

        build_local_backend(Settings(home=tmp_path, inference_threads=3, **s3), registry)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_rows_an_organisation_starts_beside_another_are_one_on_a_cpu_and_half_the_batch_on_a_gpu() -> None:
    assert rows_per_organization_when_shared(Settings(device="cpu")) == 1
    assert rows_per_organization_when_shared(Settings(device="cuda", inference_concurrency=16)) == 8
    chosen = Settings(device="cpu", inference_rows_per_organization_when_shared=3)
    assert rows_per_organization_when_shared(chosen) == 3
