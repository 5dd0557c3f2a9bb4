"""Loraport: OpenAI-compatible LoRA fine-tuning and serving."""
