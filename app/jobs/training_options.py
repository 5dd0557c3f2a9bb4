"""Resolving the `lora` extension object against the base model's defaults, with errors that say why."""

from typing import Any

from app.base_models.registry import BaseModelSpec
from app.errors import InvalidRequest
from app.jobs.schemas import LoraOptions

DEFAULT_DROPOUT = 0.05
DEFAULT_WARMUP_RATIO = 0.1


def resolve_training_options(spec: BaseModelSpec, options: LoraOptions | None) -> dict[str, Any]:
    """Every LoRA and trainer setting as a number or list, as the worker will use it."""
    options = options or LoraOptions()
    rank = options.r or spec.lora_rank
    targets = options.target_modules or list(spec.lora_target_modules)
    if options.target_modules and spec.lora_target_modules:
        unknown = sorted(set(options.target_modules) - set(spec.lora_target_modules))
        if unknown:
            raise InvalidRequest(
                f"lora.target_modules: {spec.id} has no module {unknown[0]!r}; "
                f"choose from {', '.join(spec.lora_target_modules)}",
                param="lora.target_modules",
            )
    max_seq_length = options.max_seq_length or spec.max_seq_length
    if max_seq_length > spec.max_seq_length:
        raise InvalidRequest(
            f"lora.max_seq_length is {max_seq_length}; {spec.id} handles at most {spec.max_seq_length} tokens",
            param="lora.max_seq_length",
        )
    return {
        "r": rank,
        "alpha": options.alpha or 2 * rank,
        "dropout": DEFAULT_DROPOUT if options.dropout is None else options.dropout,
        "target_modules": targets,
        "max_seq_length": max_seq_length,
        "warmup_ratio": DEFAULT_WARMUP_RATIO if options.warmup_ratio is None else options.warmup_ratio,
    }
