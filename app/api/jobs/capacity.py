"""Refusing, when a job is created, what no training worker could run: QLoRA without a CUDA GPU, or a job whose
memory estimate exceeds every worker's GPU."""

import json

from app.core.errors import InvalidRequest
from app.core.worker_devices import Gpu
from app.ml.base_models.quantization import FOUR_BIT
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.hyperparameters import Resolved
from app.ml.memory import training_memory

HEADROOM = 0.9  # of a GPU's memory a job may plan to use: allocator fragmentation takes the rest


def check_trainable(
    registry: BaseModelRegistry, base_model: str, options: dict, hyper: Resolved, workers: dict[str, list[Gpu]]
) -> None:
    """`workers`: each training worker's GPUs as reported (an empty list: it trains on the CPU)."""
    gpus = [gpu for worker_gpus in workers.values() for gpu in worker_gpus]
    quantized = options.get("quantization") == FOUR_BIT
    if quantized and not gpus:
        raise InvalidRequest(
            "lora.quantization '4bit' (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit kernels run on CUDA only, and "
            + ("no training worker here has one" if workers else "no training worker has reported one")
            + "; leave lora.quantization out to train at full precision",
            param="lora.quantization",
        )
    if not gpus:
        return  # trained on the CPU: no GPU memory to fit into
    config = json.loads((registry.materialize(base_model) / "config.json").read_text())
    estimate = training_memory(
        config, options.get("quantization"), hyper.batch_size, options["max_seq_length"], options["r"],
        options["target_modules"],
    )  # fmt: skip
    largest = max(gpu.memory_bytes for gpu in gpus)
    if estimate.total <= HEADROOM * largest:
        return
    advice = (
        "lower hyperparameters.batch_size or lora.max_seq_length"
        if quantized
        else "set lora.quantization to '4bit' (QLoRA), or lower hyperparameters.batch_size or lora.max_seq_length"
    )
    raise InvalidRequest(
        f"This job needs about {_gib(estimate.total)} GiB of GPU memory (weights {_gib(estimate.weights)}, adapter "
        f"and optimizer {_gib(estimate.adapter)}, activations {_gib(estimate.activations)}), more than the "
        f"{_gib(HEADROOM * largest)} GiB it may use of the largest training GPU ({_gib(largest)} GiB); {advice}",
        param="hyperparameters.batch_size" if quantized else "lora.quantization",
        code="insufficient_gpu_memory",
    )


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f}"
