from __future__ import annotations

import asyncio
import hashlib

import pytest

from captioner.config import GenerationSettings, load_settings
from captioner.observability.metrics import Metrics
from captioner.serving.cache import CaptionCache, cache_key
from captioner.serving.service import CaptionService
from tests.support.fakes import FakeCaptioner

pytestmark = pytest.mark.anyio

MODEL = {"name": "m", "revision": "main", "prompt": "a picture of "}
SHA = "ab" * 32


def key(**generation: object) -> str:
    base: dict[str, object] = {"num_beams": 3, "max_length": 20, "min_length": 5, "num_captions": 1}
    base.update(generation)
    return cache_key(SHA, model_id=MODEL, generation=base)


def test_key_changes_with_every_generation_setting_and_the_model() -> None:
    reference = key()
    variants = [
        key(num_beams=4),
        key(max_length=21),
        key(min_length=6),
        key(num_captions=2),
        key(length_penalty=0.5),
        cache_key(
            "cd" * 32, model_id=MODEL, generation={"num_beams": 3, "max_length": 20, "min_length": 5, "num_captions": 1}
        ),
        cache_key(
            SHA,
            model_id={**MODEL, "revision": "v2"},
            generation={"num_beams": 3, "max_length": 20, "min_length": 5, "num_captions": 1},
        ),
        cache_key(
            SHA,
            model_id={**MODEL, "prompt": "an image of "},
            generation={"num_beams": 3, "max_length": 20, "min_length": 5, "num_captions": 1},
        ),
    ]
    assert len({reference, *variants}) == len(variants) + 1
    assert key() == reference  # and it is stable
    assert key(num_beams=3, max_length=20) == reference  # order does not matter


def test_every_generation_setting_field_is_covered_by_the_key() -> None:
    # The service builds the key from all GenerationSettings fields; each must change it.
    from dataclasses import asdict

    settings = asdict(GenerationSettings())
    base = cache_key(SHA, model_id=MODEL, generation=settings)
    for name, value in settings.items():
        changed = {**settings, name: value + 1}
        assert cache_key(SHA, model_id=MODEL, generation=changed) != base, name


async def test_the_service_keys_its_cache_by_num_captions_too() -> None:
    """The same image asked for 1 and then 2 captions is two answers: neither may be served for the other."""
    fake = FakeCaptioner()
    settings = load_settings(None, {}).replace("batching", max_wait_ms=0)
    service = CaptionService(settings, fake, Metrics())
    service.start()
    try:
        data = b"one image"
        sha = hashlib.sha256(data).hexdigest()
        assert service.key_for(sha, 1) != service.key_for(sha, 2)
        outcomes = [await service.caption(data, n) for n in (1, 2, 1, 2)]
        assert [(o.cached, len(o.captions)) for o in outcomes] == [(False, 1), (False, 2), (True, 1), (True, 2)]
        assert fake.batches == [["one image"], ["one image"]]  # one generate per num_captions, then hits
        assert service.cached(sha, 3) is None and service.cached(sha, 2) is not None
    finally:
        assert await service.close(5)


def test_lru_eviction() -> None:
    cache: CaptionCache[str] = CaptionCache(max_entries=2, ttl_s=100)
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a") == "A"  # a is now the most recently used
    cache.put("c", "C")
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == ("A", "C")


def test_ttl_expiry() -> None:
    now = [0.0]
    cache: CaptionCache[str] = CaptionCache(max_entries=10, ttl_s=60, timer=lambda: now[0])
    cache.put("a", "A")
    now[0] = 59.0
    assert cache.get("a") == "A"
    now[0] = 60.5
    assert cache.get("a") is None


def test_zero_entries_disables_storage() -> None:
    cache: CaptionCache[str] = CaptionCache(max_entries=0, ttl_s=60)
    cache.put("a", "A")
    assert cache.get("a") is None


async def test_single_flight_n_concurrent_identical_requests_share_one_computation() -> None:
    cache: CaptionCache[str] = CaptionCache(max_entries=10, ttl_s=60)
    calls = 0
    release = asyncio.Event()

    async def compute() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "caption"

    waiters = [asyncio.ensure_future(cache.get_or_compute("k", compute)) for _ in range(10)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiters)
    assert calls == 1
    assert {r.value for r in results} == {"caption"}
    assert not any(r.cached for r in results)
    again = await cache.get_or_compute("k", compute)
    assert again.cached and calls == 1
    assert (cache.hits, cache.misses) == (1, 10)


async def test_failure_reaches_every_joiner_and_is_not_cached() -> None:
    cache: CaptionCache[str] = CaptionCache(max_entries=10, ttl_s=60)
    release = asyncio.Event()

    async def broken() -> str:
        await release.wait()
        raise ValueError("bad image")

    waiters = [asyncio.ensure_future(cache.get_or_compute("k", broken)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert cache.get("k") is None


async def test_joiner_takes_over_when_the_leader_is_cancelled() -> None:
    cache: CaptionCache[str] = CaptionCache(max_entries=10, ttl_s=60)
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return "caption"

    leader = asyncio.ensure_future(cache.get_or_compute("k", compute))
    await asyncio.sleep(0)
    joiner = asyncio.ensure_future(cache.get_or_compute("k", compute))
    await asyncio.sleep(0)
    leader.cancel()
    result = await joiner
    assert result.value == "caption"
    assert calls == 2


class DictLevel:
    """A second level in a dict, counting calls; ``gate`` holds every get until set."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.gets = 0
        self.puts = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def get(self, key: str) -> str | None:
        self.gets += 1
        await self.gate.wait()
        return self.data.get(key)

    async def put(self, key: str, value: str) -> None:
        self.puts += 1
        self.data[key] = value


async def test_second_level_hit_fills_the_local_level_without_computing() -> None:
    shared = DictLevel()
    shared.data["k"] = "from another replica"
    cache: CaptionCache[str] = CaptionCache(max_entries=10, ttl_s=60, second_level=shared)

    async def compute() -> str:
        raise AssertionError("must not compute on a shared hit")

    first = await cache.get_or_compute("k", compute)
    assert (first.value, first.cached, first.level) == ("from another replica", True, "redis")
    second = await cache.get_or_compute("k", compute)
    assert (second.cached, second.level) == (True, "local")
    assert shared.gets == 1 and shared.puts == 0


async def test_a_computed_value_is_stored_in_both_levels() -> None:
    shared = DictLevel()
    cache: CaptionCache[str] = CaptionCache(max_entries=10, ttl_s=60, second_level=shared)

    async def compute() -> str:
        return "fresh"

    lookup = await cache.get_or_compute("k", compute)
    assert (lookup.value, lookup.cached, lookup.level) == ("fresh", False, None)
    assert shared.data == {"k": "fresh"} and cache.get("k") == "fresh"


async def test_concurrent_misses_share_one_second_level_lookup() -> None:
    shared = DictLevel()
    shared.data["k"] = "shared"
    shared.gate.clear()
    cache: CaptionCache[str] = CaptionCache(max_entries=10, ttl_s=60, second_level=shared)

    async def compute() -> str:
        raise AssertionError("must not compute")

    waiters = [asyncio.ensure_future(cache.get_or_compute("k", compute)) for _ in range(5)]
    await asyncio.sleep(0)
    shared.gate.set()
    results = await asyncio.gather(*waiters)
    assert shared.gets == 1
    assert all(r.value == "shared" and r.cached and r.level == "redis" for r in results)


async def test_a_failed_computation_is_stored_in_neither_level() -> None:
    shared = DictLevel()
    cache: CaptionCache[str] = CaptionCache(max_entries=10, ttl_s=60, second_level=shared)

    async def broken() -> str:
        raise ValueError("bad image")

    with pytest.raises(ValueError):
        await cache.get_or_compute("k", broken)
    assert shared.data == {} and cache.get("k") is None and shared.puts == 0


async def test_local_storage_off_still_uses_the_second_level() -> None:
    shared = DictLevel()
    cache: CaptionCache[str] = CaptionCache(max_entries=0, ttl_s=60, second_level=shared)
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        return "v"

    await cache.get_or_compute("k", compute)
    again = await cache.get_or_compute("k", compute)
    assert calls == 1 and again.cached and again.level == "redis"
