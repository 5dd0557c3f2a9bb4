"""The base-model registry as configured for this deployment."""

from app.core.settings import Settings
from app.core.storage import store_for
from app.ml.base_models.registry import BaseModelRegistry


def registry_from_settings(settings: Settings) -> BaseModelRegistry:
    fetch = store_for(settings).download_prefix if settings.s3_endpoint_url else None
    return BaseModelRegistry(settings.model_cache_dir, settings.base_models_file, fetch_prefix=fetch)
