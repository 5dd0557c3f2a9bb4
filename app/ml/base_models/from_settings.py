"""The base-model registry as configured for this deployment."""

from app.core.settings import Settings
from app.core.storage import store_for
from app.ml.base_models.catalogue import database_catalogue, store_catalogue
from app.ml.base_models.registry import BaseModelRegistry

_STORE_MAX_AGE_S = 30.0  # a replica serves only what the API sends it; a new id is read at once anyway


def registry_from_settings(settings: Settings) -> BaseModelRegistry:
    """Added models come from PostgreSQL, or, on an inference replica (no database), from the object store."""
    if not settings.s3_endpoint_url:
        return BaseModelRegistry(settings.model_cache_dir)
    store = store_for(settings)
    if settings.database_url:
        return BaseModelRegistry(
            settings.model_cache_dir, database_catalogue(settings.database_url), store.download_prefix
        )
    return BaseModelRegistry(
        settings.model_cache_dir, store_catalogue(store), store.download_prefix, max_age_s=_STORE_MAX_AGE_S
    )
