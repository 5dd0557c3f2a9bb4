"""The tiny random-weight Llama as files on disk and as a registered base model (`tiny-llama`): unit tests load it
directly, and the service tiers train and serve it wherever output quality is not what a test checks."""

import json
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from tests.helpers.tiny_models import TINY_MODEL_ID, build_model, build_tokenizer


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
def base_models_file(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A `LORAPORT_BASE_MODELS_FILE` that adds the tiny model to the default one."""
    path = tmp_path_factory.mktemp("settings") / "base_models.json"
    # Random weights learn slowly at the 2e-4 of a large model; 2e-2 makes a few steps show.
    entry = {"id": TINY_MODEL_ID, "source": "local", "location": str(tiny_model_dir), "learning_rate": 2e-2}
    path.write_text(json.dumps([entry]))
    return path
