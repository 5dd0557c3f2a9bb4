"""The tiny random-weight Llama as files on disk and as a registered base model (`tiny-llama`): unit tests load it
directly, and the service tiers train and serve it wherever output quality is not what a test checks."""

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from app.ml.base_models.registry import BaseModelSpec
from tests.helpers.tiny_models import TINY_MODEL_ID, build_model, build_tokenizer

# Random weights learn slowly at the 2e-4 of a large model; 2e-2 makes a few steps show.
TINY_LEARNING_RATE = 2e-2


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerFast) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama")
    build_model(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_spec(tiny_model_dir: Path) -> BaseModelSpec:
    """The tiny model as a registry knows it, its weights read from `tiny_model_dir` (the unit tier's registries)."""
    return BaseModelSpec(
        id=TINY_MODEL_ID, source="local", location=str(tiny_model_dir), gguf_filename=None, lora_target_modules=(),
        max_seq_length=512, created=0, learning_rate=TINY_LEARNING_RATE,
    )  # fmt: skip
