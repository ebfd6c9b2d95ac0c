"""Redis as the shared second-level cache, end to end: two replicas (two apps, same tiny model, same real
redis-server) behind real HTTP. What one replica computed, the other serves from Redis; with Redis killed,
both keep answering, local-only, and the failure shows in the metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from captioner.shared_state.redis_cache import KEY_PREFIX, RedisCacheLevel
from captioner.shared_state.redis_client import CircuitBreaker, RedisClient
from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.redis import RedisServer
from tests.support.servers import LiveServer, replicas

CAPTION = "/api/v1/caption"


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def pair(tiny_model_dir: Path, redis: RedisServer) -> Iterator[tuple[LiveServer, ...]]:
    settings = tiny_settings(tiny_model_dir, cache={"redis_url": redis.url, "redis_timeout_s": 0.5})
    with replicas(LiveServer(settings), LiveServer(settings)) as servers:
        yield servers


def post(server: LiveServer, data: bytes) -> httpx.Response:
    return httpx.post(server.url + CAPTION, content=data, headers={"Content-Type": "image/png"}, timeout=30)


def test_an_image_captioned_by_replica_a_is_a_cache_hit_on_replica_b(
    pair: tuple[LiveServer, ...], redis: RedisServer
) -> None:
    a, b = pair
    data = photo(101)
    first = post(a, data)
    assert first.status_code == 200, first.text
    assert first.json()["cached"] is False
    images_on_b = b.metric("captioner_images_total")
    second = post(b, data)
    assert second.status_code == 200, second.text
    assert second.json()["cached"] is True
    assert second.json()["captions"] == first.json()["captions"]
    assert b.metric("captioner_images_total") == images_on_b  # B's model never saw it
    assert b.metric("captioner_cache_level_hits_total", 'level="redis"') == 1
    # Now B holds it locally too: the next hit on B doesn't need Redis.
    third = post(b, data)
    assert third.json()["cached"] is True
    assert b.metric("captioner_cache_level_hits_total", 'level="local"') == 1
    assert b.metric("captioner_cache_level_hits_total", 'level="redis"') == 1
    # The entry in Redis carries the cache's TTL.
    keys = redis.command("KEYS", KEY_PREFIX + "*").decode()
    assert keys.startswith("*") and int(keys[1:].split("\r\n")[0]) >= 1
    key = keys.split("\r\n")[2]
    ttl_ms = int(redis.command("PTTL", key).strip()[1:])
    assert 86_000_000 < ttl_ms <= 86_400_000


class CountingBreaker(CircuitBreaker):
    """The real breaker on a clock that moves only when the test says, counting the calls that reached Redis
    and failed (a call the open breaker skips never gets that far)."""

    def __init__(self) -> None:
        self.now = time.monotonic()
        super().__init__(clock=lambda: self.now)
        self.failed_calls = 0

    def record_failure(self) -> bool:
        self.failed_calls += 1
        return super().record_failure()


def redis_client_of(server: LiveServer) -> RedisClient:
    service = server.app.state.captioner.pool.router.any_service()
    assert service is not None and isinstance(service.cache.second_level, RedisCacheLevel)
    return service.cache.second_level.store


def recover(server: LiveServer, breaker: CountingBreaker, seeds: range) -> None:
    """New images through ``server`` until its breaker has probed the restarted Redis successfully."""
    deadline = time.monotonic() + 60  # only against a hang
    for seed in seeds:
        # The backoff is over: the next call is a probe. (One may still fail on a connection that the pool
        # held from before the outage; each failed probe re-opens the breaker, hence a new backoff each time.)
        breaker.now += 3600
        assert post(server, photo(seed)).status_code == 200
        if server.metric("captioner_cache_backend_up") == 1 or time.monotonic() > deadline:
            break
    assert server.metric("captioner_cache_backend_up") == 1
    assert not breaker.is_open


def test_a_redis_outage_degrades_to_local_only_never_a_failed_request(
    pair: tuple[LiveServer, ...], redis: RedisServer
) -> None:
    a, b = pair
    warm = photo(201)
    assert post(a, warm).status_code == 200
    errors_before = a.metric("captioner_cache_backend_errors_total", 'operation="get"') + a.metric(
        "captioner_cache_backend_errors_total", 'operation="set"'
    )
    assert a.metric("captioner_cache_backend_up") == 1
    stores = [redis_client_of(a), redis_client_of(b)]
    running_breakers = [store.breaker for store in stores]
    breaker_a, breaker_b = CountingBreaker(), CountingBreaker()
    # Closed breakers, like the ones they replace, whose backoff never ends on its own.
    stores[0].breaker, stores[1].breaker = breaker_a, breaker_b
    redis.kill()
    try:
        # New images (a Redis get and set each), and one A has cached locally: all answered.
        for seed in range(202, 212):
            response = post(a, photo(seed))
            assert response.status_code == 200, response.text
            assert response.json()["cached"] is False
        local = post(a, warm)
        assert local.status_code == 200 and local.json()["cached"] is True
        on_b = post(b, photo(300))
        assert on_b.status_code == 200 and on_b.json()["cached"] is False
        errors_after = a.metric("captioner_cache_backend_errors_total", 'operation="get"') + a.metric(
            "captioner_cache_backend_errors_total", 'operation="set"'
        )
        assert errors_after >= errors_before + 20  # failed or skipped calls are all counted (10 gets, 10 sets)
        # The outage cost no per-request timeouts: the breaker opened after its threshold of failed calls, and
        # every later call was skipped without touching the network.
        assert breaker_a.is_open
        assert breaker_a.failed_calls == breaker_a.failure_threshold
        assert a.metric("captioner_cache_backend_up") == 0
        redis.start()
        recover(a, breaker_a, range(1000, 1100))
        recover(b, breaker_b, range(1100, 1200))
    finally:
        if not redis.ping():
            redis.start()
        for store, running in zip(stores, running_breakers, strict=True):
            store.breaker = running
    # Redis back (empty): replicas share again.
    data = photo(400)
    assert post(a, data).json()["cached"] is False
    assert post(b, data).json()["cached"] is True


@pytest.mark.anyio
async def test_an_unreadable_entry_in_redis_is_a_miss_not_an_error(redis: RedisServer) -> None:
    from captioner.model.protocol import Caption
    from captioner.serving.service import _Computed, _decode, _encode
    from captioner.shared_state.redis_cache import RedisCacheLevel
    from captioner.shared_state.redis_client import RedisClient

    errors: list[str] = []
    level = RedisCacheLevel(
        RedisClient(redis.url, name="test", timeout_s=1.0), ttl_s=60, encode=_encode, decode=_decode,
        on_error=errors.append,
    )  # fmt: skip
    try:
        for garbage in ("not-json", '{"captions":[]}', '{"captions":[["a"]]}', '{"other":1}'):
            assert redis.command("SET", KEY_PREFIX + "k", f"'{garbage}'").startswith(b"+OK")
            assert await level.get("k") is None
        assert errors == ["decode"] * 4
        value = _Computed([Caption("a cat", 0.5), Caption("a dog", 0.25)], info=None)
        await level.put("k", value)  # overwrites the bad entry
        assert await level.get("k") == value
    finally:
        await level.aclose()
