"""The batch watchdog's decision (``health.watchdog_s``, issue 21): pure, on a fake clock, and what model health
does when it fires. The real stuck process (``kill -STOP``) is tests/system/test_watchdog.py."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from captioner.config import HealthSettings
from captioner.errors import ModelUnavailable
from captioner.model.watchdog import BatchWatchdog, Stall, stalled
from captioner.observability.metrics import Metrics
from captioner.serving.health import ModelHealth
from tests.support.metrics import metric_value

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_is_stalled_only_once_in_flight_for_watchdog_s() -> None:
    assert not stalled(since=None, now=1e9, watchdog_s=10)  # nothing in flight: an idle model is fine
    assert not stalled(since=100.0, now=109.99, watchdog_s=10)
    assert stalled(since=100.0, now=110.0, watchdog_s=10)
    assert not stalled(since=100.0, now=1e9, watchdog_s=0)  # 0: off


def test_the_watchdog_times_the_batch_in_flight_and_forgets_it_when_it_answers() -> None:
    clock = Clock()
    watchdog = BatchWatchdog(5.0, clock=clock)
    assert watchdog.stall() is None
    first = watchdog.started()
    clock.now += 4.9
    assert watchdog.stall() is None
    watchdog.ended(first)
    clock.now += 60  # idle for a minute: not a stall
    assert watchdog.stall() is None
    second = watchdog.started()
    clock.now += 5.0
    assert watchdog.stall() == Stall(second, 5.0)
    assert watchdog.still_in_flight(second) and not watchdog.still_in_flight(first)
    watchdog.ended(first)  # a late end of an older batch does not clear the one in flight
    assert watchdog.still_in_flight(second)
    watchdog.ended(second)
    assert watchdog.stall() is None and not watchdog.still_in_flight(second)


def test_an_off_watchdog_never_fires() -> None:
    clock = Clock()
    watchdog = BatchWatchdog(0.0, clock=clock)
    watchdog.started()
    clock.now += 1e6
    assert watchdog.stall() is None


async def test_a_stalled_model_is_down_at_once_and_counted_until_its_successor_is_up() -> None:
    async def probe() -> None:
        raise AssertionError("no probe: the model is down, not failing")

    metrics = Metrics()
    health = ModelHealth("default", metrics, HealthSettings(watchdog_s=3), probe=probe)
    assert health.ready
    health.model_stalled("the watchdog killed the model process: a batch in flight for 3 s", 1.0)
    assert not health.ready
    assert health.problem == "model down: the watchdog killed the model process: a batch in flight for 3 s"
    with pytest.raises(ModelUnavailable) as refused:
        health.admit()
    assert refused.value.headers["Retry-After"] == "1"
    exposition = generate_latest(metrics.registry).decode()
    assert metric_value(exposition, "captioner_model_watchdog_kills_total", 'variant="default"') == 1
    assert metric_value(exposition, "captioner_model_up", 'variant="default"') == 0
    health.model_up()
    assert health.ready


def test_the_default_is_on_and_generous() -> None:
    assert HealthSettings().watchdog_s == 120.0
