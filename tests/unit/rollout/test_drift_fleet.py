"""Drift in a fleet (issue 21, item 5.5): one webhook call per alert episode for all the replicas, through a shared
episode (Redis in production: tests/system/test_fleet_episode_redis.py; an in-memory one here). Deliveries are
recorded instead of sent: no socket."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from captioner.observability.metrics import Metrics
from captioner.outbound.delivery import Delivery
from captioner.rollout.drift_alert import DriftAlert


class SharedEpisode:
    """What Redis holds for the fleet: one key, set if absent and renewed while anyone alerts. ``ttl_passes()`` is
    one TTL going by: the key is gone unless renewed meanwhile."""

    def __init__(self) -> None:
        self.live = False
        self.renewed = False
        self.down = False

    def ttl_passes(self) -> None:
        self.live, self.renewed = self.live and self.renewed, False


class Replica:
    """One replica's view of the shared episode (what RedisFleetEpisode does against one Redis)."""

    def __init__(self, shared: SharedEpisode) -> None:
        self.shared = shared

    async def begin(self) -> bool:
        if self.shared.down:
            raise ConnectionError("redis down")
        began, self.shared.live = not self.shared.live, True
        return began

    async def keep(self) -> None:
        self.shared.live = self.shared.renewed = True

    async def aclose(self) -> None:
        pass


class FakeWatch:
    def __init__(self) -> None:
        self.alert = True
        self.listeners: list[Any] = []

    def add_alert_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def report(self) -> dict[str, Any]:
        return {"enabled": True, "features": {}}

    def alerting(self) -> bool:
        return self.alert


class Webhook:
    """The webhook sender: records each body instead of sending it."""

    def __init__(self, calls: list[bytes]) -> None:
        self.calls = calls

    async def send(self, body: bytes) -> Delivery:
        self.calls.append(body)
        return Delivery("delivered", attempts=1, problem="")


def replica(shared: SharedEpisode, calls: list[bytes]) -> tuple[DriftAlert, FakeWatch]:
    watch = FakeWatch()
    hook = DriftAlert(watch, Webhook(calls), Metrics(), recheck_s=0.01, fleet=Replica(shared))  # type: ignore[arg-type]
    hook.start(asyncio.get_running_loop())
    return hook, watch


async def settled(hook: DriftAlert) -> None:
    deadline = time.monotonic() + 10
    while hook._episode is None or not hook._episode.done():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_the_fleet_calls_once_per_episode() -> None:
    shared, calls = SharedEpisode(), []
    (a, watch_a), (b, watch_b) = replica(shared, calls), replica(shared, calls)
    try:
        for watch in (watch_a, watch_b):  # both replicas see the same shift
            watch.listeners[0]("width", 3.0)
        await asyncio.sleep(0.1)
        assert len(calls) == 1
        watch_a.alert = False  # a's traffic calms down; b still alerts and keeps the fleet's episode alive
        await settled(a)
        for _ in range(3):
            await asyncio.sleep(0.05)
            shared.ttl_passes()
        watch_a.alert = True
        watch_a.listeners[0]("width", 3.0)  # a alerts again within the same fleet episode
        await asyncio.sleep(0.1)
        assert len(calls) == 1
        watch_a.alert = watch_b.alert = False
        await settled(a)
        await settled(b)
        shared.ttl_passes()
        shared.ttl_passes()  # no replica renewed it for its TTL: the episode is over
        watch_b.alert = True
        watch_b.listeners[0]("brightness", 2.0)
        await asyncio.sleep(0.1)
        assert len(calls) == 2
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.anyio
async def test_with_the_shared_episode_unreachable_each_replica_calls() -> None:
    shared, calls = SharedEpisode(), []
    shared.down = True
    (a, watch_a), (b, watch_b) = replica(shared, calls), replica(shared, calls)
    try:
        watch_a.listeners[0]("width", 3.0)
        watch_b.listeners[0]("width", 3.0)
        await asyncio.sleep(0.1)
        assert len(calls) == 2  # a duplicate rather than none
    finally:
        await a.aclose()
        await b.aclose()
