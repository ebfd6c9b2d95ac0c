"""The caption cache: key building, LRU+TTL storage (cachetools) and single-flight.

The key is the image's SHA-256 plus everything that can change the answer: the model's name and revision,
every generation setting, the prompt and the number of captions asked for. Two requests with the same key
would get the same captions, so the second one is served from the cache, or, while the first is still
being computed, it waits for that same computation instead of starting another (single-flight).

Two levels: the in-process LRU, then optionally a shared ``SecondLevel`` (Redis: ``shared_state/redis_cache.py``) that
every replica reads and writes. A local miss asks the second level (inside the single-flight, so N identical
concurrent requests cost one Redis round trip); a hit there fills the local level; a computed value is stored
in both. The second level never raises: its failures read as misses.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from cachetools import TTLCache

V = TypeVar("V")

Level = Literal["local", "redis"]  # the second level is Redis; the label names it for operators


class SecondLevel(Protocol[V]):
    """A slower cache behind the local one, shared between replicas. Must not raise on backend failures."""

    async def get(self, key: str) -> V | None: ...

    async def put(self, key: str, value: V) -> None: ...


def cache_key(image_sha256: str, *, model_id: Mapping[str, Any], generation: Mapping[str, Any]) -> str:
    """One string naming an answer. ``model_id`` and ``generation`` are flat mappings of settings."""
    parts = {"image": image_sha256, "model": dict(model_id), "generation": dict(generation)}
    # Sorted JSON makes the key independent of dict order; hashing keeps it short in memory and in Redis.
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Lookup(Generic[V]):
    value: V
    cached: bool  # True when served from the cache without waiting for the model
    level: Level | None = None  # where a cached value came from


class CaptionCache(Generic[V]):
    """An in-process LRU with a TTL per entry, an optional shared second level, and single-flight for misses.

    Only used from the event loop thread, so the plain (non-thread-safe) cachetools structure is safe.
    ``max_entries == 0`` disables local storage but keeps single-flight (and the second level, if any).
    """

    def __init__(
        self,
        *,
        max_entries: int,
        ttl_s: float,
        timer: Callable[[], float] = time.monotonic,
        second_level: SecondLevel[V] | None = None,
    ) -> None:
        self._store: TTLCache[str, V] | None = (
            TTLCache(maxsize=max_entries, ttl=ttl_s, timer=timer) if max_entries > 0 else None
        )
        self.second_level = second_level
        self._in_flight: dict[str, asyncio.Future[Lookup[V]]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return 0 if self._store is None else len(self._store)

    def get(self, key: str) -> V | None:
        if self._store is None:
            return None
        # Indexing checks the TTL and refreshes the LRU order like .get() does, at a quarter of its cost (.get
        # looks the key up twice, reading the clock each time): this runs on every cache hit.
        try:
            return self._store[key]
        except KeyError:
            return None

    def put(self, key: str, value: V) -> None:
        if self._store is not None:
            self._store[key] = value

    def peek(self, key: str) -> Lookup[V] | None:
        """A hit in this process's cache, counted; None on a miss (not counted: the caller will go on)."""
        value = self.get(key)
        if value is None:
            return None
        self.hits += 1
        return Lookup(value, cached=True, level="local")

    async def get_or_compute(self, key: str, compute: Callable[[], Awaitable[V]]) -> Lookup[V]:
        """The cached value, or the result of one ``compute()`` shared by every concurrent caller."""
        hit = self.peek(key)
        if hit is not None:
            return hit
        self.misses += 1
        while (in_flight := self._in_flight.get(key)) is not None:
            try:
                # shield: one joiner giving up must not cancel the computation the others wait for.
                return await asyncio.shield(in_flight)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if in_flight.cancelled() and task is not None and not task.cancelling():
                    continue  # the leader's caller went away, not ours: take over the computation
                raise
        return await self._lead(key, compute)

    async def _lead(self, key: str, compute: Callable[[], Awaitable[V]]) -> Lookup[V]:
        future: asyncio.Future[Lookup[V]] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            lookup = await self._fetch(key, compute)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # mark it retrieved: there may be no joiner, and that is fine
            raise
        else:
            future.set_result(lookup)
            return lookup
        finally:
            del self._in_flight[key]

    async def _fetch(self, key: str, compute: Callable[[], Awaitable[V]]) -> Lookup[V]:
        value = self.get(key)  # a cancelled leader may have stored it before its caller went away
        if value is not None:
            return Lookup(value, cached=True, level="local")
        if self.second_level is not None:
            shared = await self.second_level.get(key)
            if shared is not None:
                self.put(key, shared)
                return Lookup(shared, cached=True, level="redis")
        value = await compute()
        self.put(key, value)
        if self.second_level is not None:
            # Awaited, not fired and forgotten: once this response is sent, every replica can see the answer.
            # A slow Redis costs at most its short timeout, and the breaker stops even that after two failures.
            await self.second_level.put(key, value)
        return Lookup(value, cached=False)
