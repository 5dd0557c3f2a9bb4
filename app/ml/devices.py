"""Which device training and inference run on."""

import importlib.util

import torch

from app.core.settings import Settings
from app.core.worker_devices import Capabilities, Gpu


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


def worker_capabilities(settings: Settings) -> Capabilities:
    """What a training worker declares it can run: its GPU, 4-bit kernels where bitsandbytes has CUDA, and the base
    models `settings.worker_base_models` limits it to."""
    gpus = training_gpus(compute_device(settings))
    four_bit = bool(gpus) and importlib.util.find_spec("bitsandbytes") is not None
    models = settings.worker_base_models
    return Capabilities(gpus, four_bit, None if models is None else list(models))
