"""The canary analysis for a fleet (issue 21, item 5.5): every replica's figures summed, one verdict, a rollback
led by one replica and followed by the others. Replicas share an in-memory table here (Redis in production:
tests/system/test_redis_table.py); variants are fakes with live statistics."""

from __future__ import annotations

import types
from typing import Any, cast

import pytest

from captioner.config import CanarySettings, load_settings
from captioner.observability.metrics import Metrics
from captioner.rollout.canary import Verdict
from captioner.rollout.canary_fleet import FleetCanary, Window, decode, encode, total
from captioner.rollout.canary_watch import CanaryWatch
from captioner.serving.live_stats import VariantStats
from captioner.serving.variants import Variant, VariantRouter

SETTINGS = CanarySettings(min_requests=100, max_confidence_drop=0.1)


class Table:
    """What Redis holds for the fleet: hashes of rows, and set-once values."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, bytes]] = {}
        self.values: dict[str, bytes] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("redis down")

    async def publish(self, key: str, field: str, value: bytes, ttl_s: float) -> dict[str, bytes]:
        self._check()
        self.hashes.setdefault(key, {})[field] = value
        return dict(self.hashes[key])

    async def first(self, key: str, value: bytes, ttl_s: float) -> bytes:
        self._check()
        return self.values.setdefault(key, value)

    async def get(self, key: str) -> bytes | None:
        self._check()
        return self.values.get(key)

    async def aclose(self) -> None:
        pass


class Service:
    """A variant's service, as the watch reads it: live statistics and health (always ready here)."""

    def __init__(self) -> None:
        self.stats = VariantStats()
        self.health = types.SimpleNamespace(unready_since=None)


class Pool:
    def __init__(self) -> None:
        self.router = VariantRouter()
        self.failed: dict[str, Any] = {}
        for name, weight in (("production", 90), ("canary", 10)):
            settings = load_settings(None, {}).replace("model", name=f"cap:{name}", path=f"/registry/{name}")
            self.router.add(Variant(name, weight, settings, cast(Any, Service())))

    def set_weight(self, name: str, weight: float) -> None:
        self.router.set_weight(name, weight)

    def serve(self, variant: str, n: int, confidence: float) -> None:
        found = self.router.get(variant)
        assert found is not None
        for _ in range(n):
            found.service.stats.answered(0.05, confidence)


class Replica:
    def __init__(self, table: Table) -> None:
        self.pool, self.metrics, self.rolled = Pool(), Metrics(), cast(list[Verdict], [])

        async def on_rollback(canary: Any, verdict: Verdict) -> None:
            self.rolled.append(verdict)

        fleet = FleetCanary(table, ttl_s=60)
        self.watch = CanaryWatch(cast(Any, self.pool), SETTINGS, self.metrics, on_rollback=on_rollback, fleet=fleet)

    def rollbacks(self) -> float:
        return cast(float, self.metrics.rollbacks.labels("canary", "confidence")._value.get())


def test_rows_round_trip_and_sum() -> None:
    stats = VariantStats()
    stats.answered(0.1, 0.5)
    stats.failed(2.0)
    stats.cache_hit()
    window = Window(stats.snapshot(), ratings=3, approved=2.0)
    assert decode(encode({"canary": window})) == {"canary": window}
    both = total([{"canary": window}, {"canary": window, "production": Window()}])
    assert both["canary"].stats.requests == 4 and both["canary"].ratings == 6 and "production" in both
    assert both["canary"].signals().approval == pytest.approx(2 / 3)


@pytest.mark.anyio
async def test_two_replicas_judge_their_traffic_together_and_roll_back_once() -> None:
    table = Table()
    a, b = Replica(table), Replica(table)
    for replica in (a, b):
        assert (await replica.watch.check()).action == "wait"  # type: ignore[union-attr]
        replica.pool.serve("production", 60, 0.9)
        replica.pool.serve("canary", 60, 0.5)
    verdict = await a.watch.check()  # a's 60 alone: not enough to judge
    assert verdict is not None and verdict.action == "wait" and a.watch.status["replicas"] == 2
    verdict = await b.watch.check()  # a's and b's: 120 of each, the canary's confidence 0.4 lower
    assert verdict is not None and (verdict.action, verdict.reason) == ("rollback", "confidence")
    assert b.watch.status["canary"]["requests"] == 120
    assert b.rolled == [verdict] and b.rollbacks() == 1  # b led: counted, recorded (the registry's alias)
    followed = await a.watch.check()
    assert followed == verdict and a.watch.status["decided_by"] == "another replica"
    assert a.pool.router.get("canary").weight == 0  # type: ignore[union-attr]
    assert a.rolled == [] and a.rollbacks() == 0  # a followed: one rollback for the fleet
    assert await a.watch.check() is None and await b.watch.check() is None


@pytest.mark.anyio
async def test_a_replica_judges_its_own_figures_while_the_table_is_unreachable() -> None:
    table = Table()
    a = Replica(table)
    await a.watch.check()
    table.down = True
    a.pool.serve("production", 100, 0.9)
    a.pool.serve("canary", 100, 0.5)
    verdict = await a.watch.check()
    assert verdict is not None and verdict.action == "rollback" and a.rollbacks() == 1


@pytest.mark.anyio
async def test_a_healthy_fleet_is_healthy_everywhere() -> None:
    table = Table()
    a, b = Replica(table), Replica(table)
    for replica in (a, b):
        await replica.watch.check()
        replica.pool.serve("production", 50, 0.8)
        replica.pool.serve("canary", 50, 0.8)
    await a.watch.check()
    assert (await b.watch.check()).action == "healthy"  # type: ignore[union-attr]
    assert (await a.watch.check()).action == "healthy"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_two_replicas_deciding_at_once_record_one_verdict_and_one_follows() -> None:
    table = Table()
    a, b = Replica(table), Replica(table)
    for replica in (a, b):
        await replica.watch.check()
        replica.pool.serve("production", 100, 0.9)
        replica.pool.serve("canary", 100, 0.5)
    verdict = await b.watch.check()
    recorded = table.values.copy()
    table.values.clear()  # a reads the verdict before b's write lands...
    real_first = table.first

    async def first_after_b(key: str, value: bytes, ttl_s: float) -> bytes:
        table.values.update(recorded)  # ...and records its own after it
        return await real_first(key, value, ttl_s)

    table.first = first_after_b  # type: ignore[method-assign]
    assert await a.watch.check() == verdict
    assert (b.rollbacks(), a.rollbacks(), len(b.rolled), len(a.rolled)) == (1, 0, 1, 0)


@pytest.mark.anyio
async def test_a_canary_down_on_one_replica_is_rolled_back_on_every_replica() -> None:
    table = Table()
    a, b = Replica(table), Replica(table)
    for replica in (a, b):
        await replica.watch.check()
    canary = b.pool.router.get("canary")
    assert canary is not None
    canary.service.health.unready_since = -1e9  # down on b for ages; a's model is fine
    verdict = await b.watch.check()
    assert verdict is not None and verdict.reason == "model_down"
    assert await a.watch.check() == verdict and a.pool.router.get("canary").weight == 0  # type: ignore[union-attr]
