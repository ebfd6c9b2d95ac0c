"""The circuit breaker (pure, with a fake clock) and RedisClient against a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from captioner.shared_state.redis_client import CircuitBreaker, RedisClient, RedisUnavailable
from tests.support.clock import FakeClock
from tests.support.net import free_port
from tests.support.redis import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


async def test_get_set_with_ttl_against_real_redis(redis: RedisServer) -> None:
    store = RedisClient(redis.url, name="test", timeout_s=1.0)
    try:
        assert await store.get("k") is None
        await store.set("k", b"value", ttl_s=60)
        assert await store.get("k") == b"value"
        ttl_ms = int(redis.command("PTTL", "k").strip()[1:])
        assert 59_000 < ttl_ms <= 60_000
        await store.set("short", b"x", ttl_s=0.05)
        await asyncio.sleep(0.2)
        assert await store.get("short") is None
        await store.delete("k")
        assert await store.get("k") is None
    finally:
        await store.aclose()


def skipped(exc: pytest.ExceptionInfo[RedisUnavailable]) -> bool:
    """Whether the call was refused by the open breaker, without touching the network."""
    return "skipped (circuit open)" in str(exc.value)


async def test_a_dead_redis_fails_fast_then_is_skipped_then_recovers(redis: RedisServer) -> None:
    errors: list[str] = []
    states: list[bool] = []
    clock = FakeClock(100.0)  # the backoff ends when the test says so, not when a loaded machine gets round to it
    breaker = CircuitBreaker(failure_threshold=2, min_backoff_s=0.3, max_backoff_s=1, clock=clock)
    store = RedisClient(
        redis.url, name="test", timeout_s=0.5, on_error=errors.append, on_state=states.append, breaker=breaker
    )
    try:
        await store.set("k", b"v", ttl_s=60)
        redis.kill()
        for _ in range(2):
            with pytest.raises(RedisUnavailable) as failed:
                await store.get("k")
            assert not skipped(failed)  # these two reached the network and failed there
        assert breaker.is_open and states == [False]
        # While open, calls don't touch the network at all.
        for _ in range(1000):
            with pytest.raises(RedisUnavailable) as refused:
                await store.get("k")
            assert skipped(refused)
        assert len(errors) == 1002
        redis.start()  # same port, empty (no persistence)
        for _ in range(20):
            clock.advance(60)  # the backoff is over: the next call probes
            try:
                assert await store.get("k") is None
                break
            except RedisUnavailable:
                pass  # a connection the pool held from before the outage: the next probe gets a fresh one
        assert not breaker.is_open and states == [False, True]
        await store.set("k", b"again", ttl_s=60)
        assert await store.get("k") == b"again"
    finally:
        await store.aclose()


async def test_an_unreachable_redis_costs_two_failed_calls_then_none() -> None:
    # Nothing listens on this port: connection refused at once, and the breaker opens after two calls.
    breaker = CircuitBreaker(failure_threshold=2, clock=FakeClock(100.0))
    store = RedisClient(f"redis://127.0.0.1:{free_port()}/0", name="test", timeout_s=0.2, breaker=breaker)
    try:
        outcomes = []
        for _ in range(50):
            with pytest.raises(RedisUnavailable) as failed:
                await store.get("k")
            outcomes.append(skipped(failed))
        assert outcomes == [False] * 2 + [True] * 48
        assert store.breaker.is_open
        assert await store.ping() is False
    finally:
        await store.aclose()


async def test_a_redis_that_accepts_but_never_answers_costs_one_timeout_per_call_until_the_breaker_opens() -> None:
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes the handshakes; nobody ever reads or writes
    port = silent.getsockname()[1]
    breaker = CircuitBreaker(failure_threshold=2, clock=FakeClock(100.0))
    store = RedisClient(f"redis://127.0.0.1:{port}/0", name="test", timeout_s=0.1, breaker=breaker)
    try:
        started = time.perf_counter()
        failures = []
        for _ in range(20):
            with pytest.raises(RedisUnavailable) as failed:
                await store.get("k")
            failures.append(failed)
        elapsed = time.perf_counter() - started
        # Two calls wait out their timeout and open the breaker; the other 18 are skipped without a wait.
        assert [isinstance(f.value.__cause__, TimeoutError) for f in failures] == [True] * 2 + [False] * 18
        assert [skipped(f) for f in failures] == [False] * 2 + [True] * 18
        assert elapsed > 0.18  # the two did wait (a lower bound holds however loaded the machine is)
    finally:
        await store.aclose()
        silent.close()
