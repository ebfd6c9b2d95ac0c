"""Redis as the second level of the caption cache, shared by every replica behind the load balancer.

It sits behind the in-process LRU (``cache.CaptionCache``): a local miss asks Redis, a Redis hit fills the local
cache, and a computed answer is stored in both. Entries expire after ``cache.ttl_s`` in Redis as locally.

A cache must never fail a request, so every Redis problem (down, slow, a value it cannot read) reads as a miss
here: the error is counted in ``captioner_cache_backend_errors_total{operation}``, the breaker in
``RedisClient`` keeps a dead Redis from costing each request a timeout, and the server goes on local-only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from captioner.shared_state.redis_client import RedisClient, RedisUnavailable

logger = logging.getLogger("captioner.cache")

V = TypeVar("V")

# Bump when the stored value's format changes: old replicas and new ones then never read each other's entries.
KEY_PREFIX = "captioner:caption:v1:"


class RedisCacheLevel(Generic[V]):
    """``get``/``put`` of cache values in Redis, encoded by ``encode``/``decode``; never raises for Redis."""

    def __init__(
        self,
        store: RedisClient,
        *,
        ttl_s: float,
        encode: Callable[[V], bytes],
        decode: Callable[[bytes], V],
        on_error: Callable[[str], None] = lambda operation: None,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._encode = encode
        self._decode = decode
        self._on_error = on_error

    async def get(self, key: str) -> V | None:
        try:
            raw = await self.store.get(KEY_PREFIX + key)
        except RedisUnavailable:
            return None  # counted and logged by the store
        if raw is None:
            return None
        try:
            return self._decode(raw)
        except (ValueError, KeyError, TypeError) as exc:
            # Someone else's data under our key, or a half-written value: treat as a miss, and overwrite later.
            self._on_error("decode")
            logger.warning("ignoring an unreadable cache entry in redis (%s: %s)", type(exc).__name__, exc)
            return None

    async def put(self, key: str, value: V) -> None:
        # A failure is counted and logged by the store; the local level still has the value.
        with contextlib.suppress(RedisUnavailable):
            await self.store.set(KEY_PREFIX + key, self._encode(value), ttl_s=self.ttl_s)

    async def aclose(self) -> None:
        await self.store.aclose()
