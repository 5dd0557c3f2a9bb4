"""Loraport: OpenAI-compatible LoRA fine-tuning and serving."""

__version__ = "0.1.0"
