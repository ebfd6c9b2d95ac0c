"""Rate limits across replicas: one token bucket per caller in Redis, this replica's own buckets as the fallback.

With ``rate_limit.redis_url`` set (empty: ``cache.redis_url``), every admitted request costs one Redis round
trip, an atomic Lua token bucket (shared_state/redis_rate_limit.py), so N replicas give a caller its limit
once rather than N times. With no Redis configured, the in-memory buckets (rate_limit.py) decide alone, as
before. Either way ``bucket_key`` (rate_limit.py) names the bucket, in one place.

When Redis can't answer (down, slower than ``rate_limit.redis_timeout_s``, or its circuit breaker open, which
then costs no network time at all):
- ``rate_limit.fail_open: true`` (the default): this replica's own bucket decides, so the limit holds per
  replica (a caller may get up to N times its limit over N replicas until Redis is back);
- ``fail_open: false``: the request is refused with 503 ``overloaded`` + Retry-After (the breaker's next try),
  not 429: the caller is not over its limit, nobody can tell, and another replica may know.
``captioner_rate_limit_fallbacks_total{action="local"|"refused"}`` counts each such decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from captioner.config import Settings
from captioner.errors import Overloaded, RateLimited
from captioner.guard.rate_limit import RateLimiter, bucket_key
from captioner.observability.metrics import Metrics
from captioner.shared_state.redis_client import RedisClient, RedisUnavailable
from captioner.shared_state.redis_rate_limit import RedisTokenBucket


@dataclass(frozen=True)
class RateLimit:
    """A caller's token bucket: ``rate_per_s`` (0: no limit) and ``burst`` (0: ``max(1, ceil(rate))``)."""

    rate_per_s: float
    burst: int

    @property
    def capacity(self) -> int:
        return self.burst if self.burst > 0 else max(1, math.ceil(self.rate_per_s))


class SharedRateLimiter:
    """Token buckets per caller, each with the caller's own limit (a tenant's, else ``default``)."""

    def __init__(
        self,
        default: RateLimit,
        shared: RedisTokenBucket | None = None,
        *,
        fail_open: bool = True,
        on_fallback: Callable[[str], None] = lambda action: None,
    ) -> None:
        self.default = default
        self.shared = shared
        self.fail_open = fail_open
        self._on_fallback = on_fallback
        # This replica's buckets, one limiter per distinct limit (a handful: the config's and the tenants').
        self._locals: dict[RateLimit, RateLimiter] = {}

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> SharedRateLimiter:
        config = settings.rate_limit
        default = RateLimit(config.per_key_rps, config.burst)
        url = config.redis_url or settings.cache.redis_url
        # A keys file may give a tenant a rate at any time: its buckets are shared as soon as there is a Redis.
        if not url or not (default.rate_per_s > 0 or settings.auth.keys_file):
            return cls(default)
        metrics.rate_limit_backend_up.set(1)
        client = RedisClient(
            url,
            name="rate_limit",
            timeout_s=config.redis_timeout_s,
            on_state=lambda up: metrics.rate_limit_backend_up.set(1 if up else 0),
        )
        return cls(
            default,
            RedisTokenBucket(client),
            fail_open=config.fail_open,
            on_fallback=lambda action: metrics.rate_limit_fallbacks.labels(action).inc(),
        )

    @property
    def enabled(self) -> bool:
        """Whether callers without a limit of their own are limited."""
        return self.default.rate_per_s > 0

    def local(self, limit: RateLimit) -> RateLimiter:
        limiter = self._locals.get(limit)
        if limiter is None:
            limiter = self._locals[limit] = RateLimiter(limit.rate_per_s, limit.burst)
        return limiter

    async def check(self, principal: str, limit: RateLimit | None = None) -> None:
        """Take one token for ``principal`` under ``limit`` (None: the default), or raise ``RateLimited`` (429) /
        ``Overloaded`` (503, fail-closed). A limit of rate 0 costs nothing: no bucket, no call."""
        limit = limit or self.default
        if not limit.rate_per_s > 0:
            return
        key = bucket_key(principal)
        if self.shared is None:
            self.local(limit).check(key)
            return
        try:
            wait_s = await self.shared.take(key, rate_per_s=limit.rate_per_s, capacity=limit.capacity)
        except RedisUnavailable:
            if self.fail_open:
                self._on_fallback("local")
                self.local(limit).check(key)
                return
            self._on_fallback("refused")
            retry_in_s = self.shared.client.breaker.retry_in_s
            raise Overloaded("rate limits can't be checked right now, retry later", retry_after_s=retry_in_s) from None
        if wait_s is not None:
            raise RateLimited(retry_after_s=wait_s)

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()
