"""Requests per API key per minute, counted in Redis so that every API process shares one count.

A fixed one-minute window (INCR and EXPIRE in one round trip): a client over the limit learns from Retry-After when
the window ends, which the openai SDK waits for before it retries. Redis being down lets requests through: the limit
protects the service, and refusing everyone while the broker restarts would not.
"""

import math
import time

import redis
import structlog

from app.core.errors import Overloaded
from app.core.redis import redis_client

WINDOW_SECONDS = 60
log = structlog.get_logger()


class RateLimiter:
    def __init__(self, redis_url: str, per_minute: int) -> None:
        self.per_minute = per_minute
        self._redis = redis_client(redis_url, socket_timeout=1, socket_connect_timeout=1)

    def charge(self, key_digest: str) -> None:
        """Counts one request of the key (by its digest, never the key); raises `Overloaded` past the limit."""
        if (wait := self.over_limit(f"loraport:rate:{key_digest[:32]}", self.per_minute)) is not None:
            raise Overloaded(
                f"Rate limit reached for this API key on requests per min (RPM): Limit {self.per_minute}. "
                f"Please try again in {wait}s.",
                retry_after=wait,
            )

    def over_limit(self, name: str, per_minute: int) -> int | None:
        """Counts one request against the per-minute counter `name`: the seconds to wait when that passes
        `per_minute`, else None (also with no limit, or with Redis down: requests go through)."""
        if not per_minute:
            return None
        now = time.time()
        counter = f"{name}:{int(now // WINDOW_SECONDS)}"
        try:
            with self._redis.pipeline() as pipe:
                pipe.incr(counter)
                pipe.expire(counter, 2 * WINDOW_SECONDS)
                used, _ = pipe.execute()
        except redis.RedisError as error:
            log.warning("api.rate_limit.unavailable", error=type(error).__name__)
            return None
        return max(1, math.ceil(WINDOW_SECONDS - now % WINDOW_SECONDS)) if used > per_minute else None


def charge_organization(limiter: RateLimiter, org_id: str, per_minute: int) -> None:
    """Counts one request of the organisation, whichever of its keys sent it: more keys do not buy more requests
    (`rate_limit_per_minute_per_organization`; 0: no limit). Redis down lets requests through, as for keys."""
    if (wait := limiter.over_limit(f"loraport:rate:org:{org_id}", per_minute)) is not None:
        raise Overloaded(
            f"Rate limit reached for your organization on requests per min (RPM), shared by all its API keys: "
            f"Limit {per_minute} (LORAPORT_RATE_LIMIT_PER_MINUTE_PER_ORGANIZATION). Please try again in {wait}s.",
            retry_after=wait,
        )


class FailedAuthentications:
    """Failed authentications per client address per minute, counted in Redis: past `per_minute`, the address gets
    429 before its key is even looked up, so guessing keys costs the guesser time and the database nothing."""

    def __init__(self, redis_url: str, per_minute: int) -> None:
        self.per_minute = per_minute
        self._redis = redis_client(redis_url, socket_timeout=1, socket_connect_timeout=1)

    def _counter(self, address: str, now: float) -> str:
        return f"loraport:auth-failures:{address}:{int(now // WINDOW_SECONDS)}"

    def check(self, address: str) -> None:
        """Raises `Overloaded` (`too_many_failed_authentications`) while the address is over the limit."""
        if not self.per_minute:
            return
        now = time.time()
        try:
            failures = int(self._redis.get(self._counter(address, now)) or 0)
        except redis.RedisError as error:
            log.warning("api.auth_throttle.unavailable", error=type(error).__name__)
            return
        if failures >= self.per_minute:
            wait = max(1, math.ceil(WINDOW_SECONDS - now % WINDOW_SECONDS))
            refusal = Overloaded(
                f"Too many failed authentications from your address ({self.per_minute} a minute); "
                f"check your API key and try again in {wait}s.",
                retry_after=wait,
            )
            refusal.code = "too_many_failed_authentications"
            raise refusal

    def count(self, address: str) -> None:
        """Counts one failed authentication of the address."""
        if not self.per_minute:
            return
        counter = self._counter(address, time.time())
        try:
            with self._redis.pipeline() as pipe:
                pipe.incr(counter)
                pipe.expire(counter, 2 * WINDOW_SECONDS)
                pipe.execute()
        except redis.RedisError as error:
            log.warning("api.auth_throttle.unavailable", error=type(error).__name__)
