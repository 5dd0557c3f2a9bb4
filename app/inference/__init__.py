"""Serving completions: base models in memory with LoRA adapters swapped in per request."""

from app.inference.engine import Completion, InferenceEngine

__all__ = ["Completion", "InferenceEngine"]
