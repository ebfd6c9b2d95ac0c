"""The canary analysis: the pure decision with made-up signals, the live statistics, and the watch with fakes."""

from __future__ import annotations

import dataclasses
import types
from typing import Any, cast

import pytest
from prometheus_client import generate_latest

from captioner.config import CanarySettings, load_settings
from captioner.observability.metrics import Metrics
from captioner.rollout.canary import Signals, Verdict, decide
from captioner.rollout.canary_watch import CanaryWatch
from captioner.serving.live_stats import StatsSnapshot, VariantStats
from captioner.serving.variants import Variant, VariantRouter
from tests.support.metrics import metric_value

SETTINGS = CanarySettings(min_requests=100, max_error_ratio_increase=0.01, max_p95_ratio=1.5,
                          max_confidence_drop=0.1, max_approval_drop=0.1, min_feedback=20)  # fmt: skip
GOOD = Signals(requests=500, error_ratio=0.001, p95_s=0.200, mean_confidence=0.80, feedback=50, approval=0.9)


def test_it_waits_for_enough_requests_on_both_sides() -> None:
    early = decide(GOOD, dataclasses.replace(GOOD, requests=99, error_ratio=1.0), SETTINGS)
    assert early.action == "wait" and "canary has 99 of 100" in early.detail
    assert decide(dataclasses.replace(GOOD, requests=10), GOOD, SETTINGS).action == "wait"
    assert decide(GOOD, GOOD, SETTINGS) == Verdict("healthy", None, "canary within every margin after 500 requests")


@pytest.mark.parametrize(
    ("canary", "reason"),
    [
        (dict(error_ratio=0.02), "error_ratio"),  # +0.019 > +0.01
        (dict(p95_s=0.31), "p95_latency"),  # x1.55 > x1.5
        (dict(mean_confidence=0.69), "confidence"),  # -0.11 > -0.1
        (dict(approval=0.79), "approval"),  # -0.11 > -0.1
    ],
)
def test_each_signal_alone_rolls_back_beyond_its_margin(canary: dict[str, Any], reason: str) -> None:
    verdict = decide(GOOD, dataclasses.replace(GOOD, **canary), SETTINGS)
    assert (verdict.action, verdict.reason) == ("rollback", reason)


@pytest.mark.parametrize(
    "canary",
    [dict(error_ratio=0.011), dict(p95_s=0.3), dict(mean_confidence=0.71), dict(approval=0.81),
     dict(error_ratio=None, p95_s=None, mean_confidence=None, approval=None)],
)  # fmt: skip
def test_within_the_margins_it_stays(canary: dict[str, Any]) -> None:
    assert decide(GOOD, dataclasses.replace(GOOD, **canary), SETTINGS).action == "healthy"


def test_feedback_counts_only_once_both_sides_have_enough_and_the_first_failure_names_the_reason() -> None:
    few = dataclasses.replace(GOOD, feedback=19, approval=0.1)
    assert decide(GOOD, few, SETTINGS).action == "healthy"
    everything = Signals(requests=500, error_ratio=0.5, p95_s=9.0, mean_confidence=0.1, feedback=50, approval=0.0)
    verdict = decide(GOOD, everything, SETTINGS)
    assert verdict.reason == "error_ratio"
    assert all(word in verdict.detail for word in ("error ratio", "p95 latency", "mean confidence", "approval"))


def test_stats_snapshots_subtract_exactly_and_give_a_p95_within_five_percent() -> None:
    stats = VariantStats()
    for _ in range(90):
        stats.answered(0.010, 0.5)
    before = stats.snapshot()
    for _ in range(95):
        stats.answered(0.100, 0.9)
    for _ in range(5):
        stats.failed(2.0)
    stats.answered(None, 0.9)  # a cache hit: counted, no latency
    window = stats.snapshot().minus(before)
    assert (window.requests, window.errors) == (101, 5)
    assert window.error_ratio == pytest.approx(5 / 101)
    assert window.mean_confidence == pytest.approx(0.9)
    assert 0.100 <= window.p95_s <= 0.105  # type: ignore[operator]
    assert stats.snapshot().latency_quantile(0.99) == pytest.approx(2.0, rel=0.05)
    assert StatsSnapshot().p95_s is None and StatsSnapshot().error_ratio is None


class FakePool:
    def __init__(self) -> None:
        self.router = VariantRouter()
        self.failed: dict[str, Any] = {}

    def set_weight(self, name: str, weight: float) -> None:
        self.router.set_weight(name, weight)


class FakeFeedback:
    def __init__(self) -> None:
        self.ratings: dict[str, tuple[int, float]] = {}

    def approval(self, variant: str) -> tuple[int, float]:
        return self.ratings.get(variant, (0, 0.0))


class FakeService:
    def __init__(self) -> None:
        self.stats = VariantStats()
        self.health = types.SimpleNamespace(unready_since=None)  # always ready


def variant(name: str, weight: float) -> Variant:
    settings = load_settings(None, {}).replace("model", name=f"test/{name}")
    return Variant(name, weight, settings, service=cast(Any, FakeService()))


@pytest.mark.anyio
async def test_the_watch_compares_from_when_it_first_sees_the_pair_and_rolls_back_once() -> None:
    pool, metrics, feedback = FakePool(), Metrics(), FakeFeedback()
    production, canary = variant("production", 90), variant("canary", 10)
    pool.router.add(production)
    rolled: list[tuple[str, Verdict]] = []

    async def on_rollback(v: Variant, verdict: Verdict) -> None:
        rolled.append((v.name, verdict))

    watch = CanaryWatch(cast(Any, pool), dataclasses.replace(SETTINGS, min_requests=3), metrics,
                        feedback=feedback, on_rollback=on_rollback)  # fmt: skip
    assert await watch.check() is None and watch.status == {"state": "none"}
    for _ in range(50):  # production's life before the canary: not part of the comparison
        production.service.stats.answered(0.05, 0.1)
    feedback.ratings["production"] = (100, 0.2)
    pool.router.add(canary)
    assert (await watch.check()).action == "wait"  # type: ignore[union-attr]
    for _ in range(3):
        production.service.stats.answered(0.05, 0.9)
        canary.service.stats.answered(0.05, 0.85)
    verdict = await watch.check()
    assert verdict is not None and verdict.action == "healthy"
    assert watch.status["production"]["mean_confidence"] == pytest.approx(0.9)  # the window, not production's life
    for _ in range(3):
        canary.service.stats.answered(0.05, 0.2)
    verdict = await watch.check()
    assert verdict is not None and (verdict.action, verdict.reason) == ("rollback", "confidence")
    assert pool.router.get("canary").weight == 0  # type: ignore[union-attr]
    assert rolled == [("canary", verdict)]
    assert metric_value(_text(metrics), "captioner_rollbacks_total", 'variant="canary",reason="confidence"') == 1
    assert watch.status["state"] == "rolled_back"
    assert await watch.check() is None and len(rolled) == 1  # once per canary
    assert watch.status["state"] == "rolled_back"
    pool.router.remove("canary")  # the registry's alias moved back: the variant goes
    assert await watch.check() is None
    assert watch.status["state"] == "none" and watch.status["last_rollback"]["reason"] == "confidence"
    pool.router.add(variant("canary", 10))  # a new canary starts a new comparison
    assert (await watch.check()).action == "wait"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_approval_is_compared_over_the_window_from_cumulative_ratios() -> None:
    pool, feedback = FakePool(), FakeFeedback()
    production, canary = variant("production", 50), variant("canary", 50)
    pool.router.add(production)
    pool.router.add(canary)
    feedback.ratings = {"production": (100, 0.5), "canary": (0, 0.0)}
    watch = CanaryWatch(cast(Any, pool), dataclasses.replace(SETTINGS, min_requests=1), Metrics(), feedback=feedback)
    await watch.check()
    for v in (production, canary):
        v.service.stats.answered(0.05, 0.5)
    # Since the baseline: production 20 more ratings, all approving (100 * 0.5 + 20 = 70 of 120); canary 20, 10 %.
    feedback.ratings = {"production": (120, 70 / 120), "canary": (20, 0.1)}
    verdict = await watch.check()
    assert verdict is not None and verdict.reason == "approval"
    assert watch.status["production"]["approval"] == pytest.approx(1.0)
    assert watch.status["canary"]["feedback"] == 20


def _text(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()
