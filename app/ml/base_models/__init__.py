"""Base models: the registry of ids, their weights on disk, and loading them."""

from app.ml.base_models.registry import BaseModelRegistry, BaseModelSpec, UnknownBaseModel

__all__ = ["BaseModelRegistry", "BaseModelSpec", "UnknownBaseModel"]
