import shutil
from pathlib import Path

import pytest

from app.core.errors import AdapterCorrupted
from app.core.storage import UnsafeObjectKey
from app.ml.adapter_manifest import MANIFEST, verified_fetch, verify_manifest
from app.serving import InferenceEngine
from app.serving.backend import SamplingParams
from tests.helpers.tiny_models import TINY_MODEL_ID
from tests.unit.test_trainer import TRAIN, config
from worker.training import save_adapter, train_lora

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory, tokenizer, make_model) -> Path:
    directory = tmp_path_factory.mktemp("adapter")
    save_adapter(train_lora(make_model(), tokenizer, TRAIN, None, config(n_epochs=1)).model, directory)
    return directory


def damaged_copy(source: Path, destination: Path) -> None:
    shutil.copytree(source, destination, dirs_exist_ok=True)
    weights = destination / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit-pattern in the last byte, as a bad disk or a cut transfer might leave
    weights.write_bytes(bytes(data))


def test_a_saved_adapter_carries_a_manifest_that_verifies(saved_adapter):
    assert (saved_adapter / MANIFEST).is_file()
    verify_manifest(saved_adapter, "ft:ok")


def test_a_damaged_file_is_named_in_the_error(saved_adapter, tmp_path):
    damaged_copy(saved_adapter, tmp_path)

    with pytest.raises(AdapterCorrupted, match=r"'ft:bad' failed its checksum \(adapter_model.safetensors\)"):
        verify_manifest(tmp_path, "ft:bad")


def test_a_missing_file_fails_the_check(saved_adapter, tmp_path):
    shutil.copytree(saved_adapter, tmp_path, dirs_exist_ok=True)
    (tmp_path / "adapter_config.json").unlink()

    with pytest.raises(AdapterCorrupted, match="adapter_config.json"):
        verify_manifest(tmp_path, "ft:bad")


def test_the_engine_refuses_a_damaged_download_and_keeps_nothing_of_it(registry, saved_adapter, tmp_path):
    cache_dir = tmp_path / "cache"
    damaged = InferenceEngine(registry, verified_fetch(lambda _, dest: damaged_copy(saved_adapter, dest)), cache_dir)
    params = SamplingParams(max_tokens=2, temperature=0)

    with pytest.raises(AdapterCorrupted):
        damaged.generate(TINY_MODEL_ID, "ft:x", QUESTION, params)
    assert [p.name for p in cache_dir.iterdir() if p.is_dir()] == []

    good = verified_fetch(lambda _, dest: shutil.copytree(saved_adapter, dest, dirs_exist_ok=True))
    assert InferenceEngine(registry, good, cache_dir).generate(TINY_MODEL_ID, "ft:x", QUESTION, params).text is not None


def test_a_file_the_manifest_does_not_list_is_refused(saved_adapter, tmp_path):
    """Whoever can write the bucket must not slip a file into an adapter (audit #17)."""
    shutil.copytree(saved_adapter, tmp_path, dirs_exist_ok=True)
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "tokenizer.json").write_text("{}")

    with pytest.raises(AdapterCorrupted, match=r"files its manifest does not list \(extra/tokenizer.json\)"):
        verify_manifest(tmp_path, "ft:extra")


def test_an_adapter_without_a_manifest_is_refused(saved_adapter, tmp_path):
    shutil.copytree(saved_adapter, tmp_path, dirs_exist_ok=True)
    (tmp_path / MANIFEST).unlink()

    with pytest.raises(AdapterCorrupted, match="has no checksum manifest .* train it again"):
        verify_manifest(tmp_path, "ft:legacy")


def test_a_download_whose_object_names_escape_is_a_corrupted_adapter(tmp_path):
    def escaping(_: str, dest: Path) -> None:
        raise UnsafeObjectKey("refusing s3://…/a/../../x: its name would be written outside the directory")

    with pytest.raises(AdapterCorrupted, match="is unusable: refusing"):
        verified_fetch(escaping)("orgs/o/adapters/j", tmp_path)
