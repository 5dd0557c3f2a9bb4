"""LoRA training: batching (`data`) and the fine-tuning recipe (`trainer`)."""

from worker.training.trainer import (
    EpochReport,
    StepReport,
    TrainingConfig,
    TrainingResult,
    save_adapter,
    train_lora,
)

__all__ = ["EpochReport", "StepReport", "TrainingConfig", "TrainingResult", "save_adapter", "train_lora"]
