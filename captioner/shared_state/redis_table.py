"""Small shared tables in Redis for decisions the replicas take together (the canary analysis: rollout/canary_fleet.py).

- ``publish(key, field, value, ttl_s)``: write this replica's row of a hash and read every row back, in one round
  trip; the hash lives ``ttl_s`` past its last write.
- ``first(key, value, ttl_s)``: ``SET NX``, then the value that won: the first writer's, whoever asks.
- ``get(key)``.

Values are bytes; what they mean is the caller's business. Every call may raise ``RedisUnavailable``.
"""

from __future__ import annotations

from typing import Any

from captioner.shared_state.redis_client import RedisClient


class RedisTable:
    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    async def publish(self, key: str, field: str, value: bytes, ttl_s: float) -> dict[str, bytes]:
        async def write_and_read(redis: Any) -> dict[str, bytes]:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, field, value)
                pipe.pexpire(key, max(1, int(ttl_s * 1000)))
                pipe.hgetall(key)
                rows = (await pipe.execute())[-1]
            return {bytes(k).decode(): bytes(v) for k, v in rows.items()}

        return await self.redis.execute("table_publish", write_and_read)

    async def first(self, key: str, value: bytes, ttl_s: float) -> bytes:
        async def set_once(redis: Any) -> bytes:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.set(key, value, nx=True, px=max(1, int(ttl_s * 1000)))
                pipe.get(key)
                stored = (await pipe.execute())[-1]
            return value if stored is None else bytes(stored)  # None: expired in between; ours is as good

        return await self.redis.execute("table_first", set_once)

    async def get(self, key: str) -> bytes | None:
        return await self.redis.get(key)

    async def aclose(self) -> None:
        await self.redis.aclose()
