"""Which device training and inference run on."""

import torch

from app.core.settings import Settings
from app.core.worker_devices import Gpu


def compute_device(settings: Settings) -> str:
    """`auto` takes CUDA when present; run one worker per GPU with CUDA_VISIBLE_DEVICES to use several."""
    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.device


def training_gpus(device: str) -> list[Gpu]:
    """The GPU a worker training on `device` uses (one per worker: `CUDA_VISIBLE_DEVICES` picks it)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return []
    index = torch.device(device).index or 0
    properties = torch.cuda.get_device_properties(index)
    return [Gpu(properties.name, properties.total_memory)]
