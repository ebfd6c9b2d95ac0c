"""Rate limits shared through a real redis-server: the Lua token bucket itself, and two real replicas.

Two ``python -m captioner serve`` processes share one Redis; one API key hammers both as fast as it can.
Accepted in total over the window must stay within ``burst + rate * elapsed`` (+10 %), with ``elapsed``
measured from the first request sent to the last answer, and the limit must actually bite (429s from both).
Then Redis is killed: each replica falls back to its own bucket (fail-open), so each holds the limit alone
and together they accept more than one shared bucket would, and the fallbacks are counted. Redis comes back:
the shared limit holds again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from captioner.shared_state.redis_client import RedisClient
from captioner.shared_state.redis_rate_limit import KEY_PREFIX, RedisTokenBucket
from tests.support.processes import ServerProcess
from tests.support.redis import RedisServer
from tests.support.servers import replicas
from tests.support.waits import wait_for

CAPTION = "/api/v1/caption"
KEY = "one-key-two-replicas"
RATE, BURST = 5.0, 5
WINDOW_S = 4.0
SLACK = 1.10


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


# ---------------------------------------------------------------------------------------------- the Lua bucket


def test_the_redis_bucket_is_shared_gives_its_burst_then_refuses_then_refills(redis: RedisServer) -> None:
    async def scenario() -> None:
        clients = [RedisClient(redis.url, name=f"replica-{i}", timeout_s=2.0) for i in range(2)]
        buckets = [RedisTokenBucket(client, rate_per_s=20.0, capacity=3) for client in clients]
        try:
            taken = [await buckets[i % 2].take("key:k") for i in range(3)]  # one bucket, whichever replica asks
            assert taken == [None, None, None]
            wait = await buckets[1].take("key:k")
            assert wait is not None and 0 < wait <= 1 / 20 + 1e-6  # exactly the time until one token is back
            assert await buckets[0].take("key:other") is None  # another caller, another bucket
            ttl_ms = int(redis.command("PTTL", KEY_PREFIX + "key:k").split(b"\r\n")[0][1:])
            assert 0 < ttl_ms <= 3 / 20 * 1000 + 1000  # forgotten once it would be full again
            redis.command("SCRIPT", "FLUSH")  # a restarted Redis has no scripts: loaded again on the spot
            deadline = time.monotonic() + 30
            while await buckets[0].take("key:k") is not None:  # refills at 20/s
                assert time.monotonic() < deadline, "the bucket never refilled"
                await asyncio.sleep(0.01)
        finally:
            for bucket in buckets:
                await bucket.aclose()

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------- two replicas


@dataclass
class Tally:
    accepted: dict[str, int] = field(default_factory=dict)  # per replica URL: any answer but 429
    limited: dict[str, int] = field(default_factory=dict)  # per replica URL: 429
    elapsed_s: float = 0.0  # first request sent -> last answer received
    unexpected: list[str] = field(default_factory=list)

    @property
    def total_accepted(self) -> int:
        return sum(self.accepted.values())


def hammer(urls: list[str], seconds: float) -> Tally:
    """One thread per replica, each sending as fast as it can for ``seconds`` (a cheap 400: not an image)."""
    tally = Tally(accepted=dict.fromkeys(urls, 0), limited=dict.fromkeys(urls, 0))
    lock = threading.Lock()
    first_sent: list[float] = []
    last_answered: list[float] = []

    def client(url: str) -> None:
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as http:
            stop_at = time.monotonic() + seconds
            while time.monotonic() < stop_at:
                sent = time.monotonic()
                response = http.post(
                    url + "/api/v1/caption", content=b"not an image", headers={"Content-Type": "image/png"}
                )
                answered = time.monotonic()
                with lock:
                    first_sent.append(sent)
                    last_answered.append(answered)
                    if response.status_code == 429:
                        tally.limited[url] += 1
                        assert int(response.headers["retry-after"]) >= 1
                    elif response.status_code == 400:  # through the limiter, then refused as not an image
                        tally.accepted[url] += 1
                    else:
                        tally.unexpected.append(f"{response.status_code} {response.text[:200]}")

    with ThreadPoolExecutor(len(urls)) as pool:
        for future in [pool.submit(client, url) for url in urls]:
            future.result()  # re-raises an assertion or transport error from a client
    tally.elapsed_s = max(last_answered) - min(first_sent)
    return tally


def allowed(elapsed_s: float) -> float:
    return BURST + RATE * elapsed_s


@pytest.fixture
def pair(redis: RedisServer, tiny_model_dir: Path) -> Iterator[list[ServerProcess]]:
    env = {
        "CAPTIONER_AUTH__API_KEYS": f"[{KEY}]",
        "CAPTIONER_RATE_LIMIT__PER_KEY_RPS": str(RATE),
        "CAPTIONER_RATE_LIMIT__BURST": str(BURST),
        "CAPTIONER_RATE_LIMIT__REDIS_URL": redis.url,
        "CAPTIONER_RATE_LIMIT__REDIS_TIMEOUT_S": "2",  # a busy test machine must not look like a dead Redis
    }
    with replicas(*(ServerProcess(tiny_model_dir, env=env) for _ in range(2))) as servers:
        yield list(servers)


def test_two_replicas_share_one_limit_and_fall_back_to_their_own_when_redis_dies(
    pair: list[ServerProcess],
    redis: RedisServer,
) -> None:
    urls = [server.url for server in pair]

    shared = hammer(urls, WINDOW_S)
    assert not shared.unexpected, shared.unexpected
    bound = allowed(shared.elapsed_s)
    assert BURST <= shared.total_accepted <= bound * SLACK, (shared, bound)
    assert all(n > 0 for n in shared.limited.values()), shared  # the limit bit, on both replicas
    for server in pair:
        assert server.metric("captioner_rate_limit_fallbacks_total") == 0  # every decision was Redis's
        assert server.metric("captioner_rate_limit_backend_up") == 1

    redis.kill()
    alone = hammer(urls, WINDOW_S)
    assert not alone.unexpected, alone.unexpected
    per_replica = allowed(alone.elapsed_s)
    for url in urls:  # fail-open: each replica's own bucket holds the limit...
        assert 0 < alone.accepted[url] <= per_replica * SLACK, (alone, per_replica)
        assert alone.limited[url] > 0
    assert alone.total_accepted > per_replica * SLACK  # ...so together they give more than one shared bucket
    for server in pair:
        assert server.metric("captioner_rate_limit_fallbacks_total", 'action="local"') > 0
        assert server.metric("captioner_rate_limit_backend_up") == 0

    redis.start()  # same port, empty: the breakers' next probes find it
    wait_for(lambda: all(_probe(server) == 1 for server in pair), "both replicas back on Redis")
    fallbacks = [server.metric("captioner_rate_limit_fallbacks_total") for server in pair]
    again = hammer(urls, WINDOW_S)
    assert again.total_accepted <= allowed(again.elapsed_s) * SLACK, again
    assert [server.metric("captioner_rate_limit_fallbacks_total") for server in pair] == fallbacks
    print(
        f"\nshared: {shared.total_accepted} accepted of {sum(shared.limited.values()) + shared.total_accepted} "
        f"in {shared.elapsed_s:.2f} s (allowed {bound:.1f}); Redis down: {alone.accepted} per replica "
        f"(each allowed {per_replica:.1f}); Redis back: {again.total_accepted} (allowed "
        f"{allowed(again.elapsed_s):.1f})"
    )


def _probe(server: ServerProcess) -> float:
    """One request (it may be what half-opens the breaker), then the replica's view of Redis."""
    httpx.post(server.url + CAPTION, content=b"x", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    return server.metric("captioner_rate_limit_backend_up")
