"""LoRA training: batching (`data`) and the fine-tuning recipe (`trainer`)."""

from worker.training.trainer import StepReport, TrainingConfig, TrainingResult, save_adapter, train_lora

__all__ = ["StepReport", "TrainingConfig", "TrainingResult", "save_adapter", "train_lora"]
