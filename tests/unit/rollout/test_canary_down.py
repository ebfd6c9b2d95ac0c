"""A broken canary (issue 21, item 5.2): never takes production's replicas out, and is rolled back even with no
traffic: at once when its load failed, else once down for ``canary.max_down_s``.

The rule is ``decide``'s first (pure, made-up signals); the pool keeps a failed canary load as data and leaves
the canary out of readiness; the watch feeds the rule with the canary's health and the pool's failed loads.
Variants run a fake captioner (tests/fakes.py): threads, no model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from captioner.config import CanarySettings, Settings, load_settings
from captioner.observability.metrics import Metrics
from captioner.registry.store import Registry
from captioner.rollout.canary import MODEL_DOWN, Signals, Verdict, decide
from captioner.rollout.canary_watch import CanaryWatch
from captioner.rollout.registry_source import RegistrySource
from captioner.serving.health import ModelHealth
from captioner.serving.variants import FailedVariant, Variant, VariantPool
from tests.support.fakes import FakeCaptioner
from tests.unit.registry.test_store import fake_model

SETTINGS = CanarySettings(min_requests=100, max_down_s=60)
QUIET = Signals(requests=0, error_ratio=None, p95_s=None, mean_confidence=None)
GOOD = Signals(requests=500, error_ratio=0.0, p95_s=0.2, mean_confidence=0.8)


# --- the rule ------------------------------------------------------------------------------------------------------


def test_a_failed_load_is_rolled_back_at_once_with_no_traffic() -> None:
    verdict = decide(QUIET, dataclasses.replace(QUIET, load_failed="OSError"), SETTINGS)
    assert (verdict.action, verdict.reason) == ("rollback", MODEL_DOWN)
    assert "failed to load (OSError)" in verdict.detail


def test_a_down_canary_is_rolled_back_after_the_grace_whatever_its_traffic() -> None:
    assert decide(QUIET, dataclasses.replace(QUIET, down_s=59.9), SETTINGS).action == "wait"
    verdict = decide(QUIET, dataclasses.replace(QUIET, down_s=60.0), SETTINGS)
    assert (verdict.action, verdict.reason) == ("rollback", MODEL_DOWN) and "60 s" in verdict.detail
    # A canary doing well on traffic, down only briefly (a respawn), stays.
    assert decide(GOOD, dataclasses.replace(GOOD, down_s=5.0), SETTINGS).action == "healthy"
    # Being down is judged before any figure: the reason names it.
    assert decide(GOOD, dataclasses.replace(GOOD, error_ratio=1.0, down_s=61.0), SETTINGS).reason == MODEL_DOWN


# --- health: since when a model is unable to serve -----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _probe_fails() -> None:
    raise RuntimeError("still broken")


@pytest.mark.anyio
async def test_health_knows_since_when_its_model_cannot_serve() -> None:
    clock = Clock()
    settings = load_settings(None, {}).health
    health = ModelHealth("canary", Metrics(), settings, probe=_probe_fails, clock=clock)
    assert health.unready_since is None
    health.model_down("process exited", retry_in_s=1)
    clock.now = 130.0
    health.model_down("process exited again", retry_in_s=2)  # still the same episode
    assert health.unready_since == 100.0
    health.model_up()
    assert health.unready_since is None
    for _ in range(settings.max_consecutive_failures):
        health.batch_failed(RuntimeError("bad batch"))
    assert health.unready_since == 130.0  # failing counts too
    await health.close()


# --- the pool: a failed canary load is data, and the canary is out of readiness ----------------------------------


def two_variants(canary_path: str = "") -> Settings:
    settings = load_settings(None, {})
    canary: dict[str, Any] = {"variant": "canary", "weight": 10}
    if canary_path:
        canary["path"] = canary_path
    return settings.replace("models", variants=[{"variant": "production", "weight": 90}, canary])


def load_model(settings: Settings) -> FakeCaptioner:
    if settings.model.path.endswith("broken"):
        raise OSError(f"no model at {settings.model.path}")
    return FakeCaptioner()


def pool_of(settings: Settings, optional: set[str]) -> VariantPool:
    return VariantPool(settings, Metrics(), load_model=load_model, optional=optional)


@pytest.mark.anyio
async def test_a_canary_that_fails_to_load_is_recorded_and_production_serves() -> None:
    pool = pool_of(two_variants("/models/broken"), {"canary"})
    await pool.start()
    try:
        assert [v.name for v in pool.router] == ["production"]
        failed = pool.failed["canary"]
        assert (failed.weight, failed.reason) == (10, "OSError")
        assert pool.health_problems() == []
        # A reload that no longer asks for the canary forgets the failure.
        await pool.reload(two_variants().replace("models", variants=[{"variant": "production", "weight": 100}]))
        assert pool.failed == {}
    finally:
        await pool.close(1)
    with pytest.raises(OSError):  # a required variant failing still fails the pool, as before
        await pool_of(two_variants("/models/broken"), set()).start()


@pytest.mark.anyio
async def test_only_the_canary_failing_to_load_leaves_nothing_and_that_fails() -> None:
    only = load_settings(None, {}).replace("models", variants=[{"variant": "canary", "path": "/models/broken"}])
    with pytest.raises(RuntimeError, match="no variant could be loaded"):
        await pool_of(only, {"canary"}).start()


@pytest.mark.anyio
async def test_a_down_canary_never_makes_the_replica_unready_but_production_does() -> None:
    pool = pool_of(two_variants(), {"canary"})
    await pool.start()
    try:
        canary, production = pool.router.get("canary"), pool.router.get("production")
        assert canary is not None and production is not None
        canary.service.health.model_down("process exited", retry_in_s=5)
        assert pool.health_problems() == []
        production.service.health.model_down("process exited", retry_in_s=5)
        assert pool.health_problems() == ["variant production: model down: process exited"]
        production.service.health.model_up()
        pool.set_weight("production", 0)  # the canary alone takes traffic: then its health is the replica's
        assert pool.health_problems() == ["variant canary: model down: process exited"]
    finally:
        await pool.close(1)


# --- the watch ------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_watch_rolls_back_a_canary_down_past_the_grace_with_no_traffic() -> None:
    pool, clock = pool_of(two_variants(), {"canary"}), Clock()
    await pool.start()
    rolled: list[tuple[str, Verdict]] = []

    async def on_rollback(canary: Variant | FailedVariant, verdict: Verdict) -> None:
        rolled.append((canary.name, verdict))

    try:
        watch = CanaryWatch(pool, SETTINGS, Metrics(), on_rollback=on_rollback, clock=clock)
        canary = pool.router.get("canary")
        assert canary is not None
        assert (await watch.check()).action == "wait"  # type: ignore[union-attr]
        canary.service.health.model_down("process exited", retry_in_s=5)
        canary.service.health.unready_since = clock.now
        clock.now += 59
        assert (await watch.check()).action == "wait"  # type: ignore[union-attr]
        assert watch.status["canary"]["down_s"] == 59
        clock.now += 1
        verdict = await watch.check()
        assert verdict is not None and (verdict.action, verdict.reason) == ("rollback", MODEL_DOWN)
        assert canary.weight == 0 and rolled == [("canary", verdict)]
        assert await watch.check() is None and len(rolled) == 1  # once
    finally:
        await pool.close(1)


@pytest.mark.anyio
async def test_the_watch_rolls_back_a_failed_canary_load_at_once_and_once() -> None:
    pool = pool_of(two_variants("/models/broken"), {"canary"})
    await pool.start()
    rolled: list[tuple[str, Verdict]] = []

    async def on_rollback(canary: Variant | FailedVariant, verdict: Verdict) -> None:
        rolled.append((canary.name, verdict))

    metrics = Metrics()
    try:
        watch = CanaryWatch(pool, SETTINGS, metrics, on_rollback=on_rollback)
        verdict = await watch.check()
        assert verdict is not None and (verdict.action, verdict.reason) == ("rollback", MODEL_DOWN)
        assert pool.failed["canary"].weight == 0 and [name for name, _ in rolled] == ["canary"]
        assert watch.status["state"] == "rolled_back" and watch.status["canary"]["load_failed"] == "OSError"
        assert metrics.rollbacks.labels("canary", MODEL_DOWN)._value.get() == 1
        assert await watch.check() is None and len(rolled) == 1
    finally:
        await pool.close(1)


def test_a_failed_canary_load_clears_the_registrys_canary_alias(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    for seed in (1, 2):
        registry.register(fake_model(tmp_path / f"m{seed}", seed), "cap", command="t")
    registry.update_aliases("cap", lambda a: a.promoted(1, by="t").with_canary(2, 10, by="t"))
    settings = load_settings(None, {}).replace("registry", path=str(registry.root), name="cap")
    source = RegistrySource(settings)
    source.refresh()
    name, weight, canary_settings = source.resolve(settings).variants()[1]
    failed = FailedVariant(name, weight, canary_settings, "OSError", time.monotonic())
    verdict = Verdict("rollback", MODEL_DOWN, "the canary's model failed to load (OSError)")
    asyncio.run(source.on_canary_rollback(failed, verdict))
    assert registry.aliases("cap").canary is None
    assert [n for n, _, _ in source.resolve(settings).variants()] == ["production"]  # vetoed here at once
