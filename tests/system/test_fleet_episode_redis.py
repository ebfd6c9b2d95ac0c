"""The fleet's episode in a real ``redis-server`` (issue 21, item 5.5): one replica begins it, the others join; it
lives while renewed and ends its TTL after the last renewal."""

from __future__ import annotations

import asyncio
from pathlib import Path

from captioner.shared_state.fleet_episode import RedisFleetEpisode
from captioner.shared_state.redis_client import RedisClient
from tests.support.redis import RedisServer


def test_one_replica_begins_the_episode_and_it_ends_after_its_ttl(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis:

        async def scenario() -> None:
            a, b = (
                RedisFleetEpisode(RedisClient(redis.url, name="drift", timeout_s=1.0), "k", ttl_s=0.3) for _ in range(2)
            )
            assert await a.begin() is True
            assert await b.begin() is False
            for _ in range(4):  # renewed past several TTLs: still the same episode
                await asyncio.sleep(0.15)
                await b.keep()
            assert await a.begin() is False
            await asyncio.sleep(0.5)  # nobody renewed it: over
            assert await b.begin() is True
            await a.aclose()
            await b.aclose()

        asyncio.run(scenario())
