"""What one tenant may learn from the cache about another's images (``cache.scope``).

- ``global`` (the default): every tenant's answers are served to every tenant, so a popular image is captioned
  once for all of them; but ``"cached": true`` is told to a tenant only for an image *it* sent before (with the
  same settings). Which (tenant, answer) pairs were answered is remembered here, in-process and, when the replicas
  share a Redis (``cache.redis_url``), there too, for as long as the cache keeps answers (``cache.ttl_s``). The
  first answer of an image to a tenant says ``false`` even when it came from another tenant's entry.
- ``tenant``: each tenant's answers are cached apart (the tenant is part of the cache key), so nothing about another
  tenant's images can be learned, not even from how fast a hit comes back; the price is one model call per tenant
  and image.

What ``global`` can't hide is time: a hit is answered in milliseconds, a miss in a model call. A tenant that times
its requests can tell whether someone sent the same image (with the same settings) within ``cache.ttl_s``. That
needs the exact image bytes, so it only tells about images the prober has already: choose ``tenant`` where even
that is too much (docs/operations.md, "Tenants").
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from cachetools import TTLCache

from captioner.config import Settings
from captioner.serving.outcome import CaptionOutcome
from captioner.shared_state.redis_client import RedisClient, RedisUnavailable

SEEN_PREFIX = "captioner:seen:"
_DEFAULT_SEEN = 10_000


class SeenAnswers:
    """The (tenant, answer key) pairs answered before: an LRU+TTL here, and ``SET NX`` in Redis when shared."""

    def __init__(self, *, max_entries: int, ttl_s: float, shared: RedisClient | None = None) -> None:
        self._local: TTLCache[str, bool] = TTLCache(maxsize=max(1, max_entries), ttl=ttl_s)
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self.shared = shared

    async def first_time(self, tenant: str, key: str) -> bool:
        """Whether ``tenant`` is given this answer for the first time (and remember that it was given it)."""
        token = hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest()
        if token in self._local:
            return False
        first = True
        if self.shared is not None:
            try:
                first = await self.shared.execute(
                    "seen", lambda redis: _set_once(redis, SEEN_PREFIX + token, self._ttl_ms)
                )
            except RedisUnavailable:
                first = True  # unknown: say "not cached", which tells nothing
        self._local[token] = True
        return first


async def _set_once(redis: Any, key: str, ttl_ms: int) -> bool:
    return bool(await redis.set(key, b"1", nx=True, px=ttl_ms))


class CachePrivacy:
    def __init__(self, scope: str, seen: SeenAnswers | None = None) -> None:
        self.scope = scope
        self.seen = seen

    @classmethod
    def from_settings(cls, settings: Settings) -> CachePrivacy:
        cache = settings.cache
        if cache.scope == "tenant":
            return cls(cache.scope)
        shared = None
        if cache.redis_url:
            shared = RedisClient(cache.redis_url, name="cache_seen", timeout_s=cache.redis_timeout_s)
        seen = SeenAnswers(max_entries=cache.max_entries or _DEFAULT_SEEN, ttl_s=cache.ttl_s, shared=shared)
        return cls(cache.scope, seen)

    def key_scope(self, tenant: str | None) -> str | None:
        """What partitions the cache key: the tenant with ``scope: tenant``, else nothing (one cache for all)."""
        return tenant if self.scope == "tenant" else None

    async def disclose(self, tenant: str | None, key: str, outcome: CaptionOutcome) -> CaptionOutcome:
        """``outcome`` as ``tenant`` may see it: ``cached`` only for an answer it was given before."""
        if tenant is None or self.seen is None:  # auth off (one caller), or the cache is the tenant's own
            return outcome
        first = await self.seen.first_time(tenant, key)
        return replace(outcome, cached=False) if outcome.cached and first else outcome

    async def aclose(self) -> None:
        if self.seen is not None and self.seen.shared is not None:
            await self.seen.shared.aclose()
