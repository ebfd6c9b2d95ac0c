"""The Redis client's parts that need no Redis: the circuit breaker (with a fake clock) and the password masking."""

from __future__ import annotations

import pytest

from captioner.shared_state.redis_client import CircuitBreaker
from tests.support.clock import FakeClock


def test_breaker_opens_after_the_threshold_and_backs_off_exponentially() -> None:
    clock = FakeClock(100.0)
    breaker = CircuitBreaker(failure_threshold=2, min_backoff_s=1, max_backoff_s=4, clock=clock)
    assert breaker.allow()
    assert breaker.record_failure() is False  # one failure is not an outage
    assert breaker.allow()
    assert breaker.record_failure() is True  # the second opens it
    assert not breaker.allow()
    clock.advance(0.99)
    assert not breaker.allow()
    clock.advance(0.02)
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one probe at a time
    assert breaker.record_failure() is False  # a failed probe keeps it open, for twice as long
    clock.advance(1.5)
    assert not breaker.allow()
    clock.advance(0.6)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.retry_in_s == pytest.approx(4.0)  # 1 -> 2 -> 4, capped at max_backoff_s
    clock.advance(4.01)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.retry_in_s == pytest.approx(4.0)


def test_breaker_success_closes_and_resets_the_backoff() -> None:
    clock = FakeClock(100.0)
    breaker = CircuitBreaker(failure_threshold=1, min_backoff_s=1, max_backoff_s=30, clock=clock)
    breaker.record_failure()
    clock.advance(1.01)
    assert breaker.allow()
    assert breaker.record_success() is True  # recovered
    assert breaker.allow() and breaker.allow()
    assert breaker.record_failure() is True
    assert breaker.retry_in_s == pytest.approx(1.0)  # back to the shortest backoff


def test_breaker_a_cancelled_probe_frees_the_slot() -> None:
    clock = FakeClock(100.0)
    breaker = CircuitBreaker(failure_threshold=1, min_backoff_s=1, clock=clock)
    breaker.record_failure()
    clock.advance(2)
    assert breaker.allow()
    breaker.release_probe()
    assert breaker.allow()


def test_password_is_not_logged() -> None:
    from captioner.shared_state.redis_client import _without_password

    assert _without_password("redis://:s3cret@cache:6379/0") == "redis://***@cache:6379/0"
    assert _without_password("redis://user:s3cret@cache:6379/0") == "redis://***@cache:6379/0"
    assert _without_password("redis://cache:6379/0") == "redis://cache:6379/0"
