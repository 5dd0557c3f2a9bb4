"""`loraport base-models add`: a model's weights made a transformers directory, checked, stored in the object store
and recorded in PostgreSQL, so that every API process and worker can use it within seconds, with no restart.

Everything that could fail a job later is checked here, before anything is stored: the architecture loads as a
causal LM, the LoRA targets exist, the chat template renders, its assistant spans can be found for loss masking,
and its end-of-turn token is known. Nothing is half-written: the row is inserted only after the weights are up,
and weights stored for an add that then fails are deleted.
"""

import math
import re
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from sqlalchemy.exc import IntegrityError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from app.core import base_model_records
from app.core.db import transaction
from app.core.settings import Settings
from app.core.storage import ObjectStore, store_for
from app.core.tables import BaseModelRecord
from app.ml.base_models.catalogue import spec_json, spec_of
from app.ml.base_models.gguf_import import convert_gguf
from app.ml.base_models.quantization import FOUR_BIT
from app.ml.base_models.registry import BUILT_IN, DEFAULT_MAX_SEQ_LENGTH
from app.ml.chat_templates import ChatTemplateError, check_chat_template, prepare_tokenizer, template_from_option
from app.ml.lora_targets import lora_target_names

MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
Say = Callable[[str], None]


class BaseModelRefused(ValueError):
    """The model cannot be added: the message says why and what to do."""


@dataclass(frozen=True)
class AddOptions:
    chat_template: str | None = None  # a built-in template's name or a Jinja file; None: the model's own, or default
    learning_rate: float | None = None  # at multiplier 1 and batch size 8; None: from the model's size
    lora_rank: int = 16
    max_seq_length: int | None = None  # None: the model's context, at most DEFAULT_MAX_SEQ_LENGTH
    quantization: str | None = None  # "4bit": jobs train it with QLoRA (CUDA) unless they ask otherwise


@dataclass(frozen=True)
class Inspection:
    """What `add` found, as it prints it."""

    architecture: str
    parameters: int
    context_length: int
    chat_template_source: str  # "model", "given" or "default"
    end_of_turn: str
    lora_targets: tuple[str, ...]
    learning_rate: float
    max_seq_length: int


def default_learning_rate(parameters: int) -> float:
    """2e-4 (LoRA's usual rate) for a 7B model, and up to 10x that for small ones, by √(7B / parameters): a
    135M model then gets 1.4e-3, near the 2e-3 that the default model was measured to want (bench.seed_recipe)."""
    return 2e-4 * min(10.0, max(1.0, math.sqrt(7e9 / parameters)))


def add_base_model(settings: Settings, model_id: str, source: str, options: AddOptions, say: Say) -> Inspection:
    """Make `source` (a .gguf file, a transformers directory or an `s3://bucket/prefix`) a base model `model_id`."""
    _check_id(settings, model_id)
    try:
        template = template_from_option(options.chat_template) if options.chat_template else None
    except ChatTemplateError as error:
        raise BaseModelRefused(f"--chat-template: {error}") from None
    store = store_for(settings)
    with tempfile.TemporaryDirectory(prefix="loraport-add-") as staging:
        directory = _weights_directory(settings, source, Path(staging), say)
        say("checking the model")
        inspection, template_text = inspect_model(directory, template, options)
        revision = uuid.uuid4().hex[:12]
        prefix = base_model_records.weights_prefix(model_id, revision)
        record = BaseModelRecord(
            id=model_id, revision=revision, weights_prefix=prefix, architecture=inspection.architecture,
            parameters=inspection.parameters, context_length=inspection.context_length, chat_template=template_text,
            chat_template_source=inspection.chat_template_source, lora_target_modules=list(inspection.lora_targets),
            lora_rank=options.lora_rank, learning_rate=inspection.learning_rate,
            max_seq_length=inspection.max_seq_length, quantization=options.quantization,
        )  # fmt: skip
        say(f"storing the weights under s3://{settings.s3_bucket}/{prefix}")
        try:
            store.upload_directory(prefix, directory)
            _record(settings, store, record)
        except BaseException:
            store.delete_prefix(base_model_records.revision_prefix(model_id, revision))
            raise
    return inspection


def inspect_model(directory: Path, template: str | None, options: AddOptions) -> tuple[Inspection, str | None]:
    """What the model is and how it will be fine-tuned, or `BaseModelRefused` saying why it cannot be; also the chat
    template to store (None: the tokenizer's own)."""
    try:
        config = AutoConfig.from_pretrained(directory)
        with torch.device("meta"):  # the architecture without its weights: no memory, no time
            model: PreTrainedModel = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    except (ValueError, KeyError, OSError) as error:
        raise BaseModelRefused(f"transformers cannot load this model as a causal language model: {error}") from None
    targets = lora_target_names(model)
    if not targets:
        raise BaseModelRefused("found no attention or MLP projection to train LoRA adapters on")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    try:
        source = prepare_tokenizer(tokenizer, template)
        check = check_chat_template(tokenizer)
    except ChatTemplateError as error:
        raise BaseModelRefused(f"chat template: {error}") from None
    text_config = config.get_text_config()
    context = int(getattr(text_config, "max_position_embeddings", None) or DEFAULT_MAX_SEQ_LENGTH)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    if options.quantization not in (None, FOUR_BIT):
        raise BaseModelRefused(f"unknown quantization {options.quantization!r}; the one supported is {FOUR_BIT!r}")
    inspection = Inspection(
        architecture=(config.architectures or [type(model).__name__])[0],
        parameters=parameters,
        context_length=context,
        chat_template_source=source,
        end_of_turn=check.end_of_turn,
        lora_targets=targets,
        learning_rate=options.learning_rate or default_learning_rate(parameters),
        max_seq_length=min(options.max_seq_length or DEFAULT_MAX_SEQ_LENGTH, context),
    )
    return inspection, template if source != "model" else None


def _check_id(settings: Settings, model_id: str) -> None:
    if not MODEL_ID.fullmatch(model_id):
        raise BaseModelRefused(
            f"{model_id!r} is not a valid base model id: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if model_id in BUILT_IN:
        raise BaseModelRefused(f"{model_id!r} is built in")
    with transaction(settings.require("database_url")) as session:
        if base_model_records.find(session, model_id) is not None:
            raise BaseModelRefused(f"a base model {model_id!r} exists; remove it first, or choose another id")


def _weights_directory(settings: Settings, source: str, staging: Path, say: Say) -> Path:
    """A transformers directory with the model's weights: `source` itself, or made under `staging`."""
    if source.startswith("s3://"):
        bucket, _, prefix = source.removeprefix("s3://").partition("/")
        say(f"downloading {source}")
        other = ObjectStore(settings.model_copy(update={"s3_bucket": bucket}))
        try:
            other.download_prefix(prefix.rstrip("/"), staging / "weights")
        except FileNotFoundError as error:
            raise BaseModelRefused(str(error)) from None
        return staging / "weights"
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        say(f"converting {path.name} (dequantising the GGUF weights)")
        convert_gguf(path, staging / "weights")
        return staging / "weights"
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise BaseModelRefused(
        f"{source!r} is neither a .gguf file, a transformers model directory (with config.json) nor s3://bucket/prefix"
    )


def _record(settings: Settings, store: ObjectStore, record: BaseModelRecord) -> None:
    """The row, and the same settings beside the weights for replicas; a concurrent add of the same id loses."""
    try:
        with transaction(settings.require("database_url")) as session:
            session.add(record)
            session.flush()
            store.put_bytes(base_model_records.spec_key(record.id, record.revision), spec_json(spec_of(record)))
    except IntegrityError:
        raise BaseModelRefused(f"a base model {record.id!r} was added meanwhile; remove it first") from None
