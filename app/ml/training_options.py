"""Resolving the `lora` extension object against the base model's defaults, with errors that say why."""

from collections.abc import Mapping
from typing import Any

from app.core.errors import InvalidRequest
from app.ml.base_models.registry import BaseModelSpec

# No dropout: it costs 30 % of a CPU step (a mask over the input of every LoRA layer), and the held-out set
# with the best epoch kept is the guard against overfitting (bench.seed_recipe: 0.05 did not help).
DEFAULT_DROPOUT = 0.0
DEFAULT_WARMUP_RATIO = 0.1
DEFAULT_LR_SCHEDULER = "linear"
DEFAULT_MAX_GRAD_NORM = 1.0
DEFAULT_WEIGHT_DECAY = 0.0


def resolve_training_options(spec: BaseModelSpec, requested: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every LoRA and trainer setting as a number or list, as the worker will use it; `requested` holds the
    settings the job asked for (the `lora` object without its unset fields)."""
    asked = dict(requested or {})
    rank = asked.get("r") or spec.lora_rank
    targets = asked.get("target_modules") or list(spec.lora_target_modules)
    if asked.get("target_modules") and spec.lora_target_modules:
        unknown = sorted(set(asked["target_modules"]) - set(spec.lora_target_modules))
        if unknown:
            raise InvalidRequest(
                f"lora.target_modules: {spec.id} has no module {unknown[0]!r}; "
                f"choose from {', '.join(spec.lora_target_modules)}",
                param="lora.target_modules",
            )
    max_seq_length = asked.get("max_seq_length") or spec.max_seq_length
    if max_seq_length > spec.max_seq_length:
        raise InvalidRequest(
            f"lora.max_seq_length is {max_seq_length}; {spec.id} handles at most {spec.max_seq_length} tokens",
            param="lora.max_seq_length",
        )
    return {
        "r": rank,
        "alpha": asked.get("alpha") or 2 * rank,
        "dropout": _or_default(asked.get("dropout"), DEFAULT_DROPOUT),
        "target_modules": targets,
        "max_seq_length": max_seq_length,
        "warmup_ratio": _or_default(asked.get("warmup_ratio"), DEFAULT_WARMUP_RATIO),
        "lr_scheduler": asked.get("lr_scheduler") or DEFAULT_LR_SCHEDULER,
        "max_grad_norm": _or_default(asked.get("max_grad_norm"), DEFAULT_MAX_GRAD_NORM),
        "weight_decay": _or_default(asked.get("weight_decay"), DEFAULT_WEIGHT_DECAY),
        "train_on_inputs": bool(asked.get("train_on_inputs")),
        "base_learning_rate": spec.learning_rate,  # × the job's learning_rate_multiplier
        "quantization": _quantization(asked.get("quantization"), spec.quantization),
    }


def _quantization(requested: str | None, default: str | None) -> str | None:
    chosen = requested or default
    return None if chosen == "none" else chosen


def _or_default(value: Any, default: Any) -> Any:
    return default if value is None else value


ADAPTER_SHAPE = ("r", "alpha", "dropout", "target_modules")  # fixed by an adapter once trained


def continue_adapter(
    options: dict[str, Any], adapter_config: dict[str, Any], requested: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """`options` for training an existing adapter further (peft's `adapter_config.json` given): the adapter's
    shape is kept, and asking for another one is an error rather than silently ignored."""
    inherited = {
        "r": adapter_config["r"],
        "alpha": adapter_config["lora_alpha"],
        "dropout": adapter_config.get("lora_dropout", 0.0),
        "target_modules": sorted(adapter_config["target_modules"]),
    }
    for name in ADAPTER_SHAPE:
        asked = (requested or {}).get(name)
        if asked is not None and (sorted(asked) if name == "target_modules" else asked) != inherited[name]:
            raise InvalidRequest(
                f"lora.{name} cannot change when training a fine-tuned model further; "
                f"its adapter has {name}={inherited[name]}",
                param=f"lora.{name}",
            )
    return options | inherited
