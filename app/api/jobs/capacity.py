"""What a new job needs of the training worker that runs it: CUDA for QLoRA, room on its GPU, its base model."""

import json

from app.core.worker_devices import Capabilities, Needs
from app.ml.base_models.quantization import FOUR_BIT
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.hyperparameters import Resolved
from app.ml.memory import training_memory


def job_needs(
    registry: BaseModelRegistry, base_model: str, options: dict, hyper: Resolved, workers: dict[str, Capabilities]
) -> Needs:
    """`workers`: the live training workers' capabilities. GPU memory is estimated only where a GPU may run the job
    (QLoRA, or a GPU worker is live): the estimate reads the base model's config."""
    quantized = options.get("quantization") == FOUR_BIT
    estimate = None
    if quantized or any(worker.cuda for worker in workers.values()):
        config = json.loads((registry.materialize(base_model) / "config.json").read_text())
        estimate = training_memory(
            config, options.get("quantization"), hyper.batch_size, options["max_seq_length"], options["r"],
            options["target_modules"],
        ).total  # fmt: skip
    return Needs(base_model, quantized, estimate)
