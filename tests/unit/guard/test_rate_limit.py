from __future__ import annotations

import pytest

from captioner.config import RateLimitSettings
from captioner.errors import RateLimited
from captioner.guard.rate_limit import RateLimiter
from tests.support.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


def refused(limiter: RateLimiter, client: str = "a") -> RateLimited:
    with pytest.raises(RateLimited) as info:
        limiter.check(client)
    return info.value


def test_disabled_when_rate_is_zero(clock: FakeClock) -> None:
    limiter = RateLimiter(0, 0, clock=clock)
    assert not limiter.enabled
    for _ in range(1000):
        limiter.check("a")
    assert len(limiter) == 0
    assert not RateLimiter.from_settings(RateLimitSettings()).enabled


def test_burst_is_allowed_then_429(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, 5, clock=clock)
    assert limiter.enabled
    for _ in range(5):
        limiter.check("a")
    error = refused(limiter)
    assert error.status_code == 429
    assert error.headers["Retry-After"] == "1"


def test_refill_after_one_over_rate_seconds(clock: FakeClock) -> None:
    limiter = RateLimiter(4.0, 2, clock=clock)
    limiter.check("a")
    limiter.check("a")
    refused(limiter)
    clock.advance(0.2)  # 0.8 tokens: not yet
    refused(limiter)
    clock.advance(0.05)  # exactly 1/rate after emptying
    limiter.check("a")
    refused(limiter)
    clock.advance(10)  # refills to capacity, not beyond
    limiter.check("a")
    limiter.check("a")
    refused(limiter)


@pytest.mark.parametrize("rate", [3.0, 7.0, 0.3, 1 / 3])
def test_refill_exactly_at_interval_despite_float_rounding(clock: FakeClock, rate: float) -> None:
    limiter = RateLimiter(rate, 1, clock=clock)
    for _ in range(20):
        limiter.check("a")
        refused(limiter)
        clock.advance(1 / rate)


def test_retry_after_is_exact(clock: FakeClock) -> None:
    limiter = RateLimiter(2.0, 1, clock=clock)
    limiter.check("a")
    assert limiter.wait_s("a") == pytest.approx(0.5)
    assert refused(limiter).headers["Retry-After"] == "1"
    clock.advance(0.3)
    assert limiter.wait_s("a") == pytest.approx(0.2)
    clock.advance(0.2)
    assert limiter.wait_s("a") == 0.0

    slow = RateLimiter(0.1, 1, clock=clock)
    slow.check("a")
    assert slow.wait_s("a") == pytest.approx(10.0)
    error = refused(slow)
    assert error.headers["Retry-After"] == "10"
    assert error.retry_after_s == 10
    clock.advance(4.5)
    assert refused(slow).headers["Retry-After"] == "6"  # 5.5 s left, rounded up
    clock.advance(5.5)
    slow.check("a")


def test_refused_requests_do_not_consume_tokens(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, 1, clock=clock)
    limiter.check("a")
    for _ in range(10):
        clock.advance(0.09)
        refused(limiter)
    clock.advance(0.1)
    limiter.check("a")


def test_burst_zero_defaults_to_ceil_rate(clock: FakeClock) -> None:
    assert RateLimiter(2.5, 0, clock=clock).capacity == 3
    assert RateLimiter(0.2, 0, clock=clock).capacity == 1
    limiter = RateLimiter.from_settings(RateLimitSettings(per_key_rps=2.5, burst=0), clock=clock)
    for _ in range(3):
        limiter.check("a")
    refused(limiter)


def test_clients_are_independent(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, 2, clock=clock)
    limiter.check("a")
    limiter.check("a")
    refused(limiter, "a")
    limiter.check("b")
    limiter.check("b")
    refused(limiter, "b")
    refused(limiter, "a")


def test_memory_is_bounded_with_many_distinct_clients(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, 5, max_clients=1000, clock=clock)
    for i in range(200_000):
        limiter.check(f"client-{i}")
        assert len(limiter._buckets or ()) <= 1000
    assert len(limiter) <= 1000


def test_idle_buckets_expire_once_full_again(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, 5, clock=clock)
    for i in range(100):
        limiter.check(f"client-{i}")
    assert len(limiter) == 100
    clock.advance(5.01)  # every bucket would be full again: forgetting them changes nothing
    assert len(limiter) == 0


def test_eviction_never_makes_an_active_client_stricter(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, 2, max_clients=10, clock=clock)
    limiter.check("a")
    limiter.check("a")
    for i in range(100):
        limiter.check(f"other-{i}")
    limiter.check("a")  # evicted: a fresh, full bucket


@pytest.mark.parametrize(
    ("rate", "burst", "max_clients"),
    [(-1.0, 1, 10), (float("nan"), 1, 10), (float("inf"), 1, 10), (1.0, -1, 10), (1.0, 1, 0)],
)
def test_invalid_arguments(rate: float, burst: int, max_clients: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst, max_clients=max_clients)
