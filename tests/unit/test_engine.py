import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from app.api.generation.engine_errors import http_error
from app.ml.base_models import BaseModelRegistry
from app.ml.chat_format import render_prompt_ids
from app.serving import InferenceEngine
from app.serving.adapter_files import adapter_directory_name
from app.serving.backend import SamplingParams
from app.serving.errors import AdapterRankUnsupported, SlotsBusy
from tests.helpers.tiny_models import TINY_MODEL_ID, build_model, conversation
from worker.training import TrainingConfig, save_adapter, train_lora

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def trained_adapter(tmp_path_factory, tokenizer, make_model) -> Path:
    """An adapter that has learnt to answer the question with "Paris"."""
    examples = [conversation(QUESTION[0]["content"], "Paris")] * 4
    config = TrainingConfig(n_epochs=10, batch_size=4, learning_rate=3e-2, seed=7, lora_r=16, lora_alpha=32)
    result = train_lora(make_model(), tokenizer, examples, None, config)
    directory = tmp_path_factory.mktemp("adapter")
    save_adapter(result.model, directory)
    return directory


class AdapterStore:
    """Stands in for S3: every adapter name resolves to the trained adapter's files; counts fetches."""

    def __init__(self, source: Path) -> None:
        self.source, self.fetches, self._lock = source, [], threading.Lock()

    def __call__(self, adapter_name: str, destination: Path) -> None:
        with self._lock:
            self.fetches.append(adapter_name)
        shutil.copytree(self.source, destination, dirs_exist_ok=True)


@pytest.fixture
def store(trained_adapter) -> AdapterStore:
    return AdapterStore(trained_adapter)


@pytest.fixture
def engine(registry, store, tmp_path) -> InferenceEngine:
    return InferenceEngine(registry, store, cache_dir=tmp_path / "adapters", max_adapters=2)


def ask(engine: InferenceEngine, adapter: str | None, stop: list[str] | None = None, **options):
    params = SamplingParams(**({"max_tokens": 8, "temperature": 0} | options))
    return engine.generate(TINY_MODEL_ID, adapter, QUESTION, params, stop=stop)


def test_trained_adapter_changes_the_greedy_reply(engine):
    base_before = ask(engine, None)
    tuned = ask(engine, "ft:paris")
    base_after = ask(engine, None)

    assert (tuned.text, tuned.finish_reason) == ("Paris", "stop")
    assert base_before.text != tuned.text
    assert base_after == base_before, "requests without an adapter still get the base model"
    assert tuned.prompt_tokens == base_before.prompt_tokens > 0


def test_concurrent_cold_requests_fetch_the_adapter_once(engine, store):
    with ThreadPoolExecutor(max_workers=6) as pool:
        replies = list(pool.map(lambda _: ask(engine, "ft:paris").text, range(6)))

    assert replies == ["Paris"] * 6
    assert store.fetches == ["ft:paris"]


def test_least_recently_used_adapter_is_evicted_and_reloaded_from_disk(engine, store):
    for name in ["ft:a", "ft:b", "ft:a", "ft:c"]:
        ask(engine, name)
    assert engine.loaded_adapters(TINY_MODEL_ID) == ["ft:a", "ft:c"]

    assert ask(engine, "ft:b").text == "Paris"
    assert engine.loaded_adapters(TINY_MODEL_ID) == ["ft:c", "ft:b"]
    assert store.fetches == ["ft:a", "ft:b", "ft:c"]


def test_evicted_adapter_is_fetched_again(engine, store):
    ask(engine, "ft:paris")
    engine.evict("ft:paris")

    assert engine.loaded_adapters(TINY_MODEL_ID) == []
    assert ask(engine, "ft:paris").text == "Paris"
    assert store.fetches == ["ft:paris", "ft:paris"]


def test_failed_fetch_leaves_nothing_behind(registry, store, tmp_path):
    def broken_fetch(adapter_name: str, destination: Path) -> None:
        (destination / "adapter_config.json").write_text("{}")
        raise ConnectionError("S3 went away")

    cache_dir = tmp_path / "adapters"
    with pytest.raises(ConnectionError):
        ask(InferenceEngine(registry, broken_fetch, cache_dir), "ft:paris")
    assert [p.name for p in cache_dir.iterdir() if p.is_dir()] == []

    assert ask(InferenceEngine(registry, store, cache_dir), "ft:paris").text == "Paris"


def test_stop_string_truncates_the_reply(engine):
    reply = ask(engine, "ft:paris", stop=["ri"])

    assert (reply.text, reply.finish_reason) == ("Pa", "stop")


def test_reply_cut_by_max_tokens_finishes_with_length(engine):
    reply = ask(engine, "ft:paris", max_tokens=1)

    assert (reply.completion_tokens, reply.finish_reason) == (1, "length")


def test_sampling_with_a_seed_is_repeatable(engine):
    first = ask(engine, None, temperature=1.0, seed=3, max_tokens=12)
    second = ask(engine, None, temperature=1.0, seed=3, max_tokens=12)

    assert first == second


def test_tokens_stream_one_by_one_and_cancelling_the_stream_stops_generation(engine, tokenizer):
    prompt = render_prompt_ids(tokenizer, QUESTION)
    tokens = engine.stream_tokens(TINY_MODEL_ID, None, prompt, SamplingParams(max_tokens=50, temperature=1.0, seed=1))
    first = next(tokens)
    tokens.cancel()  # the client went away

    assert isinstance(first.id, int) and first.logprob is None  # log-probabilities only when asked for
    again = list(engine.stream_tokens(TINY_MODEL_ID, None, prompt, SamplingParams(max_tokens=3, temperature=0)))
    assert 1 <= len(again) <= 3  # the engine is free again: the cancelled stream released it


def test_adapters_are_evicted_to_stay_within_the_memory_budget(registry, store, trained_adapter, tmp_path):
    size = (trained_adapter / "adapter_model.safetensors").stat().st_size
    engine = InferenceEngine(
        registry, store, cache_dir=tmp_path / "adapters", max_adapters=10, max_adapter_bytes=int(2.5 * size)
    )
    for name in ["ft:a", "ft:b", "ft:a", "ft:c"]:
        ask(engine, name)

    assert engine.loaded_adapters(TINY_MODEL_ID) == ["ft:a", "ft:c"]  # room for two; b was least recently used
    assert ask(engine, "ft:b").text == "Paris"


def test_a_new_adapter_gets_a_429_while_every_slot_holds_a_pinned_adapter(registry, store, tmp_path):
    engine = InferenceEngine(registry, store, cache_dir=tmp_path / "adapters", max_adapters=1, max_batch_size=1)
    for name in ["ft:hot", "ft:warm"]:  # two slots: the cache's one, and one for a running request's adapter
        engine.pin(TINY_MODEL_ID, name)

    with pytest.raises(SlotsBusy) as refused:
        ask(engine, "ft:new")
    answer = http_error(refused.value).response()  # what the API says of it
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "1"

    engine.evict("ft:warm")
    assert ask(engine, "ft:new").text == "Paris"


def test_a_pinned_adapter_is_never_evicted(engine):
    engine.pin(TINY_MODEL_ID, "ft:hot")
    for name in ["ft:a", "ft:b", "ft:c"]:
        ask(engine, name)

    assert engine.loaded_adapters(TINY_MODEL_ID)[0] == "ft:hot"  # least recently used, and still here
    assert "ft:a" not in engine.loaded_adapters(TINY_MODEL_ID)  # the others took turns in the remaining room


def test_adapter_files_past_the_disk_budget_are_deleted_unless_the_adapter_is_in_memory(
    registry, store, trained_adapter, tmp_path
):
    size = sum(path.stat().st_size for path in trained_adapter.rglob("*") if path.is_file())
    cache = tmp_path / "adapters"
    engine = InferenceEngine(registry, store, cache_dir=cache, max_adapters=1, max_adapter_disk_bytes=int(1.5 * size))
    for name in ["ft:a", "ft:b", "ft:c"]:
        ask(engine, name)

    kept = {entry.name for entry in cache.iterdir() if entry.is_dir() and not entry.name.startswith(".")}
    # "ft:a" left memory when "ft:b" came; "ft:b" was still in memory when "ft:c" was fetched
    assert kept == {adapter_directory_name("ft:b"), adapter_directory_name("ft:c")}
    assert ask(engine, "ft:a").text == "Paris"
    assert store.fetches == ["ft:a", "ft:b", "ft:c", "ft:a"]


def test_an_adapter_above_the_serving_rank_is_refused_with_a_422_naming_the_limit(registry, store, tmp_path):
    engine = InferenceEngine(registry, store, cache_dir=tmp_path / "adapters", max_lora_rank=8)
    with pytest.raises(AdapterRankUnsupported) as refused:
        ask(engine, "ft:rank16")

    error = http_error(refused.value)
    assert error.status_code == 422 and error.code == "adapter_rank_unsupported"
    assert "LoRA rank 16; this server serves ranks up to 8" in error.message
    assert engine.loaded_adapters(TINY_MODEL_ID) == []


def test_a_base_model_added_again_with_other_weights_is_served_with_the_new_ones(
    tmp_path, tiny_model_spec, tokenizer, store
):
    other = tmp_path / "other-weights"
    build_model(tokenizer, seed=1).save_pretrained(other)
    tokenizer.save_pretrained(other)
    catalogue = [replace(tiny_model_spec, revision="r1")]
    registry = BaseModelRegistry(tmp_path / "models", catalogue=lambda: list(catalogue), max_age_s=0)
    engine = InferenceEngine(registry, store, cache_dir=tmp_path / "adapters")
    first = ask(engine, None).text

    catalogue[:] = [replace(tiny_model_spec, revision="r2", location=str(other))]  # removed, and added again

    fresh = InferenceEngine(registry, store, cache_dir=tmp_path / "fresh-adapters")
    assert ask(engine, None).text == ask(fresh, None).text != first
