"""The vLLM backend's pure parts, and its refusal to start where vLLM or CUDA is missing (this machine)."""

import asyncio
import importlib.util
import json
import re
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from app.core.settings import Settings
from app.ml.base_models import BaseModelRegistry
from app.serving.backend import GeneratedToken, SamplingParams
from app.serving.engine import model_end_of_turn_ids
from app.serving.vllm_backend import (
    MAX_GPU_LORAS,
    MAX_LORA_RANK,
    VLLM_REQUIRED,
    LoopTokenStream,
    LoraIds,
    VllmEngine,
    VllmUnavailable,
    adapter_rank,
    end_of_turn_ids_of,
    generated_tokens,
    lora_int_id,
    vllm_engine_arguments,
    vllm_sampling_arguments,
)

END_IDS = {2, 7}


def test_greedy_params_drop_top_p_and_seed():
    arguments = vllm_sampling_arguments(SamplingParams(max_tokens=5, temperature=0, top_p=0.5, seed=3), END_IDS)
    assert arguments == {
        "max_tokens": 5,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": None,
        "stop_token_ids": [2, 7],
        "detokenize": False,
        "logprobs": None,
    }


def test_sampled_params_keep_temperature_top_p_and_seed():
    arguments = vllm_sampling_arguments(SamplingParams(max_tokens=9, temperature=0.7, top_p=0.9, seed=42), END_IDS)
    assert (arguments["temperature"], arguments["top_p"], arguments["seed"]) == (0.7, 0.9, 42)
    assert arguments["max_tokens"] == 9 and arguments["stop_token_ids"] == [2, 7] and not arguments["detokenize"]
    assert vllm_sampling_arguments(SamplingParams(max_tokens=1), END_IDS)["seed"] is None


def test_seeds_stay_within_int64_and_off_vllms_no_seed_value():
    for seed in (-1, -5, 2**63, 2**70 + 3):
        converted = vllm_sampling_arguments(SamplingParams(max_tokens=1, seed=seed), END_IDS)["seed"]
        assert 0 <= converted < 2**63 and converted != -1
    assert vllm_sampling_arguments(SamplingParams(max_tokens=1, seed=2**63 + 8), END_IDS)["seed"] == 8


def test_lora_int_id_is_stable_positive_and_fits_int32():
    names = [f"orgs/org-{i}/adapters/ftjob-{i:06d}" for i in range(2000)] + ["", "a", "ft:x:y:z"]
    ids = [lora_int_id(name) for name in names]
    assert ids == [lora_int_id(name) for name in names]
    assert all(1 <= i <= 2**31 - 1 for i in ids)
    assert len(set(ids)) == len(names)
    # Derived from sha256, not hash(): the same in every process, so a fixed value stays fixed.
    assert lora_int_id("orgs/org-1/adapters/ftjob-abc") == lora_int_id("orgs/org-1/adapters/ftjob-abc")
    assert lora_int_id("orgs/org-1/adapters/ftjob-abc") != lora_int_id("orgs/org-1/adapters/ftjob-abd")


def _colliding_names() -> tuple[str, str]:
    """Two names with the same `lora_int_id` (a birthday search over 2^31 ids: some tens of thousands of names)."""
    seen: dict[int, str] = {}
    index = 0
    while True:
        name = f"adapter-{index}"
        other = seen.setdefault(lora_int_id(name), name)
        if other != name:
            return other, name
        index += 1


def test_lora_ids_never_share_an_id_between_names():
    first, second = _colliding_names()
    assert lora_int_id(first) == lora_int_id(second)
    ids = LoraIds()
    first_id, second_id = ids(first), ids(second)
    assert first_id == lora_int_id(first) and second_id != first_id
    assert 1 <= second_id <= 2**31 - 1
    assert (ids(first), ids(second)) == (first_id, second_id)  # stable for the process's life


def test_engine_arguments_cap_gpu_slots_and_keep_cpu_cache_at_least_as_large(tmp_path):
    arguments = vllm_engine_arguments(Settings(home=tmp_path, inference_concurrency=16, adapter_cache_size=4), tmp_path)
    assert arguments == {
        "model": str(tmp_path),
        "dtype": "bfloat16",
        "enable_lora": True,
        "max_loras": MAX_GPU_LORAS,
        "max_lora_rank": MAX_LORA_RANK,
        "max_cpu_loras": MAX_GPU_LORAS,  # vLLM refuses max_cpu_loras < max_loras
    }
    few = vllm_engine_arguments(Settings(home=tmp_path, inference_concurrency=2, adapter_cache_size=32), tmp_path)
    assert (few["max_loras"], few["max_cpu_loras"]) == (2, 32)
    assert MAX_LORA_RANK in (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM accepts


def test_end_of_turn_ids_match_the_torch_engines(tiny_model_dir, tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert end_of_turn_ids_of(tiny_model_dir, tokenizer) == set(model_end_of_turn_ids(model, tokenizer))

    without_generation_config = tmp_path / "model"
    shutil.copytree(tiny_model_dir, without_generation_config)
    (without_generation_config / "generation_config.json").unlink(missing_ok=True)
    model = AutoModelForCausalLM.from_pretrained(without_generation_config)
    expected = set(model_end_of_turn_ids(model, tokenizer))
    assert end_of_turn_ids_of(without_generation_config, tokenizer) == expected == {tokenizer.eos_token_id}


def test_adapter_rank_reads_r_and_rank_pattern(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16, "rank_pattern": {}}))
    assert adapter_rank(tmp_path) == 16
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16, "rank_pattern": {"q_proj": 128}}))
    assert adapter_rank(tmp_path) == 128


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


async def _nothing() -> None:
    pass


def test_log_probabilities_come_from_vllms_per_token_candidates():
    @dataclass
    class Logprob:  # vllm.logprobs.Logprob's fields
        logprob: float
        rank: int | None = None
        decoded_token: str | None = None

    candidates = [
        {4: Logprob(-0.1, 1), 9: Logprob(-2.5, 2)},
        {4: Logprob(-0.3, 1), 9: Logprob(-1.9, 2), 11: Logprob(-4.0, 7)},  # 11 sampled, outside the top 2
    ]

    tokens = generated_tokens([4, 11], candidates, top=2)

    assert tokens == [
        GeneratedToken(4, -0.1, ((4, -0.1), (9, -2.5))),
        GeneratedToken(11, -4.0, ((4, -0.3), (9, -1.9))),
    ]
    assert generated_tokens([4, 11], None, top=None) == [GeneratedToken(4), GeneratedToken(11)]
    assert vllm_sampling_arguments(SamplingParams(max_tokens=1, logprobs=2), END_IDS)["logprobs"] == 2


def tokens(*ids: int) -> list[GeneratedToken]:
    return [GeneratedToken(token) for token in ids]


def test_loop_token_stream_hands_over_the_tokens_in_order(loop):
    async def chunks() -> AsyncIterator[list[GeneratedToken]]:
        for chunk in (tokens(1, 2), [], tokens(3)):
            await asyncio.sleep(0)
            yield chunk

    assert list(LoopTokenStream(loop, chunks, _nothing)) == tokens(1, 2, 3)


def test_loop_token_stream_raises_the_error_of_its_source(loop):
    async def chunks() -> AsyncIterator[list[GeneratedToken]]:
        yield tokens(5)
        raise ValueError("engine failed")

    stream = LoopTokenStream(loop, chunks, _nothing)
    assert next(stream) == GeneratedToken(5)
    with pytest.raises(ValueError, match="engine failed"):
        next(stream)
    assert list(stream) == []


def test_cancelling_a_loop_token_stream_ends_it_stops_its_source_and_calls_on_cancel(loop):
    started, source_stopped, aborted = threading.Event(), threading.Event(), threading.Event()

    async def endless() -> AsyncIterator[list[GeneratedToken]]:
        try:
            while True:
                started.set()
                yield tokens(1)
                await asyncio.sleep(0.01)
        finally:
            source_stopped.set()

    async def abort() -> None:
        aborted.set()

    stream = LoopTokenStream(loop, endless, abort)
    assert next(stream) == GeneratedToken(1) and started.wait(5)
    stream.cancel()
    assert source_stopped.wait(5) and aborted.wait(5)
    assert all(token.id == 1 for token in stream)  # what came before the cancel, then the end
    stream.cancel()  # again: harmless


def _vllm_can_run_here() -> bool:
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


@pytest.mark.skipif(_vllm_can_run_here(), reason="vLLM and a CUDA GPU are present")
def test_constructing_the_backend_without_vllm_or_cuda_raises_a_clear_error(tmp_path: Path):
    settings = Settings(home=tmp_path, inference_backend="vllm")

    def fetch(adapter_name: str, staging: Path) -> None:
        raise AssertionError("nothing is fetched at construction")

    with pytest.raises(VllmUnavailable, match=re.escape(VLLM_REQUIRED)):
        VllmEngine(settings, BaseModelRegistry(tmp_path / "models"), fetch)
