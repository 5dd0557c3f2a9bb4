"""The completion requests each organisation has in progress across every API process, counted in Redis: behind a
load balancer, a tenant that spreads its requests over N processes must not hold N times its cap
(`inference_per_organization`) of the shared engines or replicas.

A hold is a member of the organisation's sorted set, scored by when it lapses: released when its request ends, and
forgotten once it lapses, so the holds of a process that died are not held for ever. Redis being down lets
requests through (each process's own cap still holds), as the rate limits do.
"""

import time
import uuid

import redis
import structlog

from app.core.redis import redis_client

log = structlog.get_logger()
# Forget the lapsed holds, then add one unless the organisation holds its cap already: atomic in Redis.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
UNCOUNTED = ""  # the hold of a request let through while Redis was down


class SharedHolds:
    def __init__(self, redis_url: str, hold_seconds: float) -> None:
        """`hold_seconds`: longer than any request may run (the request timeout and a margin)."""
        self._redis = redis_client(redis_url, socket_timeout=1, socket_connect_timeout=1)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._hold_seconds = hold_seconds

    def acquire(self, organization_id: str, cap: int) -> str | None:
        """A hold for one more request of the organisation, or None when it holds `cap` already."""
        now, hold = time.time(), uuid.uuid4().hex
        arguments: list[float | int | str] = [
            now,
            cap,
            now + self._hold_seconds,
            hold,
            int(self._hold_seconds) + 1,
        ]
        try:
            taken = self._acquire(keys=[_key(organization_id)], args=arguments)
        except redis.RedisError as error:
            log.warning("api.shared_holds.unavailable", error=type(error).__name__)
            return UNCOUNTED
        return hold if taken else None

    def release(self, organization_id: str, hold: str) -> None:
        if hold == UNCOUNTED:
            return
        try:
            self._redis.zrem(_key(organization_id), hold)
        except redis.RedisError as error:  # it lapses by itself
            log.warning("api.shared_holds.unavailable", error=type(error).__name__)


def _key(organization_id: str) -> str:
    return f"loraport:inference-holds:{organization_id}"
