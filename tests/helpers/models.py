"""The tiny random-weight Llama as files on disk and as a registered base model (`tiny-llama`): unit tests load it
directly, and the service tiers train and serve it wherever output quality is not what a test checks."""

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from app.core import base_model_records
from app.core.db import transaction
from app.core.settings import Settings
from app.core.storage import store_for
from app.ml.base_models.adding import AddOptions, add_base_model
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


def add_tiny_model(settings: Settings, tiny_model_dir: Path) -> None:
    """The tiny model usable with `settings`, as `loraport base-models add` makes a model usable: added to their
    database if it lacks it, and its weights put in their object store if they are not there (a test's own
    PostgreSQL or S3 server starts empty)."""
    with transaction(settings.require("database_url")) as session:
        record = base_model_records.find(session, TINY_MODEL_ID)
    if record is None:
        options = AddOptions(learning_rate=TINY_LEARNING_RATE, max_seq_length=512)
        add_base_model(settings, TINY_MODEL_ID, str(tiny_model_dir), options, say=lambda step: None)
        return
    store = store_for(settings)
    if not store.exists(f"{record.weights_prefix}/config.json"):
        store.upload_directory(record.weights_prefix, tiny_model_dir)
