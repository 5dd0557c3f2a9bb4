"""Which device training and inference run on."""

import torch

from app.config import Settings


def compute_device(settings: Settings) -> str:
    """`auto` takes CUDA when present; run one worker per GPU with CUDA_VISIBLE_DEVICES to use several."""
    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.device
