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

from collections.abc import Callable

from captioner.config import Settings
from captioner.errors import Overloaded, RateLimited
from captioner.guard.rate_limit import RateLimiter, bucket_key
from captioner.observability.metrics import Metrics
from captioner.shared_state.redis_client import RedisClient, RedisUnavailable
from captioner.shared_state.redis_rate_limit import RedisTokenBucket


class SharedRateLimiter:
    def __init__(
        self,
        local: RateLimiter,
        shared: RedisTokenBucket | None = None,
        *,
        fail_open: bool = True,
        on_fallback: Callable[[str], None] = lambda action: None,
    ) -> None:
        self.local = local
        self.shared = shared if local.enabled else None
        self.fail_open = fail_open
        self._on_fallback = on_fallback

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> SharedRateLimiter:
        config = settings.rate_limit
        local = RateLimiter.from_settings(config)
        url = config.redis_url or settings.cache.redis_url
        if not local.enabled or not url:
            return cls(local)
        metrics.rate_limit_backend_up.set(1)
        client = RedisClient(
            url,
            name="rate_limit",
            timeout_s=config.redis_timeout_s,
            on_state=lambda up: metrics.rate_limit_backend_up.set(1 if up else 0),
        )
        shared = RedisTokenBucket(client, rate_per_s=local.rate, capacity=local.capacity)
        return cls(
            local,
            shared,
            fail_open=config.fail_open,
            on_fallback=lambda action: metrics.rate_limit_fallbacks.labels(action).inc(),
        )

    @property
    def enabled(self) -> bool:
        return self.local.enabled

    async def check(self, principal: str) -> None:
        """Take one token for ``principal``, or raise ``RateLimited`` (429) / ``Overloaded`` (503, fail-closed)."""
        key = bucket_key(principal)
        if self.shared is None:
            self.local.check(key)
            return
        try:
            wait_s = await self.shared.take(key)
        except RedisUnavailable:
            if self.fail_open:
                self._on_fallback("local")
                self.local.check(key)
                return
            self._on_fallback("refused")
            retry_in_s = self.shared.client.breaker.retry_in_s
            raise Overloaded("rate limits can't be checked right now, retry later", retry_after_s=retry_in_s) from None
        if wait_s is not None:
            raise RateLimited(retry_after_s=wait_s)

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()
