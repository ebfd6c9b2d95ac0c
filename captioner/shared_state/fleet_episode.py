"""An episode shared by every replica, in one Redis key: the first replica to begin it acts, the others don't.

``begin()`` is ``SET key NX PX ttl``: True for exactly one replica while the key lives. Every replica still in the
episode calls ``keep()`` (``SET key PX ttl``) at least once per ``ttl_s``, so the episode lasts while any replica
is in it, and ends ``ttl_s`` after the last one left (or died): the next ``begin()`` then starts a new one.
Used for drift alerts (rollout/drift_alert.py): the fleet calls the retraining webhook once per episode,
where each replica scoring its own traffic would call it once each.
"""

from __future__ import annotations

from typing import Any

from captioner.shared_state.redis_client import RedisClient


class RedisFleetEpisode:
    def __init__(self, redis: RedisClient, key: str, *, ttl_s: float) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))

    async def begin(self) -> bool:
        """Join the episode; True if this call started it (then this replica acts for the fleet)."""

        async def set_if_absent(redis: Any) -> bool:
            return bool(await redis.set(self.key, b"1", nx=True, px=self.ttl_ms))

        return await self.redis.execute("episode_begin", set_if_absent)

    async def keep(self) -> None:
        """Still in the episode: it lasts at least ``ttl_s`` more."""
        await self.redis.execute("episode_keep", lambda redis: redis.set(self.key, b"1", px=self.ttl_ms))

    async def aclose(self) -> None:
        await self.redis.aclose()
