"""LoRA training: batching (`data`) and the fine-tuning recipe (`trainer`)."""

from worker.training.trainer import (
    EpochReport,
    StepReport,
    TrainingConfig,
    TrainingHooks,
    TrainingResult,
    save_adapter,
    train_lora,
)

__all__ = [
    "EpochReport",
    "StepReport",
    "TrainingConfig",
    "TrainingHooks",
    "TrainingResult",
    "save_adapter",
    "train_lora",
]
