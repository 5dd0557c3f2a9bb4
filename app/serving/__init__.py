"""Serving completions: base models in memory, requests for different LoRA adapters batched together."""

from app.serving.engine import Completion, InferenceEngine

__all__ = ["Completion", "InferenceEngine"]
