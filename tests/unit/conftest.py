"""Tiny random-weight Llama models and a ChatML tokenizer built here, so unit tests need no hub and no GPU."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from app.ml.base_models import BaseModelRegistry
from tests.helpers.tiny_models import TINY_MODEL_ID, build_model, build_tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="session")
def make_model(tokenizer: PreTrainedTokenizerFast) -> Callable[[], LlamaForCausalLM]:
    """A fresh tiny model with the same weights on every call."""
    return lambda: build_model(tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerFast) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama")
    build_model(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def base_models_file(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("settings") / "base_models.json"
    path.write_text(json.dumps([{"id": TINY_MODEL_ID, "source": "local", "location": str(tiny_model_dir)}]))
    return path


@pytest.fixture
def registry(tmp_path: Path, base_models_file: Path) -> BaseModelRegistry:
    return BaseModelRegistry(cache_dir=tmp_path / "models", extra_models_file=base_models_file)
