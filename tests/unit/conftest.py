"""Tiny random-weight Llama models (tests/helpers/models.py builds its files and tokenizer), so unit tests need no
hub and no GPU."""

from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from app.ml.base_models import BaseModelRegistry
from app.ml.base_models.registry import BaseModelSpec
from tests.helpers.tiny_models import build_model


@pytest.fixture(scope="session")
def make_model(tokenizer: PreTrainedTokenizerFast) -> Callable[[], LlamaForCausalLM]:
    """A fresh tiny model with the same weights on every call."""
    return lambda: build_model(tokenizer)


@pytest.fixture
def registry(tmp_path: Path, tiny_model_spec: BaseModelSpec) -> BaseModelRegistry:
    return BaseModelRegistry(cache_dir=tmp_path / "models", catalogue=lambda: [tiny_model_spec])
