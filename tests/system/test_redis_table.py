"""The canary analysis' shared table in a real ``redis-server`` (issue 21, item 5.5): each replica's row and
everyone's back in one round trip, a verdict set once for the fleet, and a TTL on both."""

from __future__ import annotations

import asyncio
from pathlib import Path

from captioner.rollout.canary import Verdict
from captioner.rollout.canary_fleet import VERDICT_PREFIX, WINDOWS_PREFIX, FleetCanary, Window
from captioner.serving.live_stats import VariantStats
from captioner.shared_state.redis_client import RedisClient
from captioner.shared_state.redis_table import RedisTable
from tests.support.redis import RedisServer


def test_two_replicas_sum_their_rows_and_record_one_verdict(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis:

        def replica(name: str) -> FleetCanary:
            return FleetCanary(RedisTable(RedisClient(redis.url, name="canary", timeout_s=1.0)), ttl_s=60,
                               replica=name)  # fmt: skip

        async def scenario() -> None:
            a, b = replica("a"), replica("b")
            stats = VariantStats()
            for _ in range(3):
                stats.answered(0.05, 0.5)
            mine = {"canary": Window(stats.snapshot(), ratings=1, approved=1.0)}
            assert (await a.gather("pair", mine))[1] == 1
            summed, replicas = await b.gather("pair", mine)
            assert replicas == 2 and summed["canary"].stats.requests == 6 and summed["canary"].ratings == 2
            assert await a.decided("pair") is None
            first = await b.settle("pair", Verdict("rollback", "confidence", "low"))
            second = await a.settle("pair", Verdict("rollback", "error_ratio", "errors"))
            assert first == second and first.by == "b" and first.verdict.reason == "confidence"
            assert await a.decided("pair") == first
            await a.aclose()
            await b.aclose()

        asyncio.run(scenario())
        for key in (WINDOWS_PREFIX + "pair", VERDICT_PREFIX + "pair"):
            assert 0 < int(redis.command("PTTL", key).strip()[1:]) <= 60_000
