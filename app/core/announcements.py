"""New fine-tuned models announced on a Redis channel: a worker publishes each one it stores, and every process
that serves inference warms its adapter (`app.serving.warmup`), so the first request does not pay for the
download."""

import json
from typing import TypedDict

import redis
import structlog

from app.core.redis import redis_client

log = structlog.get_logger()
ADAPTERS_CHANNEL = "loraport:adapters"


class AdapterAnnouncement(TypedDict):
    base_model: str
    adapter: str  # the adapter's storage prefix


def announce_adapter(redis_url: str, base_model_id: str, adapter_prefix: str) -> None:
    """Best effort: a missed announcement only means a cold first request."""
    try:
        with redis_client(redis_url) as client:
            announcement: AdapterAnnouncement = {"base_model": base_model_id, "adapter": adapter_prefix}
            client.publish(ADAPTERS_CHANNEL, json.dumps(announcement))
    except redis.RedisError:
        log.warning("adapters.announce_failed", adapter=adapter_prefix, exc_info=True)
