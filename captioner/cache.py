"""The caption cache: key building, LRU+TTL storage (cachetools) and single-flight.

The key is the image's SHA-256 plus everything that can change the answer: the model's name and revision,
every generation setting, the prompt and the number of captions asked for. Two requests with the same key
would get the same captions, so the second one is served from the cache, or, while the first is still
being computed, it waits for that same computation instead of starting another (single-flight).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cachetools import TTLCache

V = TypeVar("V")


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


class CaptionCache(Generic[V]):
    """An in-process LRU with a TTL per entry, plus single-flight for concurrent misses.

    Only used from the event loop thread, so the plain (non-thread-safe) cachetools structure is safe.
    ``max_entries == 0`` disables storage but keeps single-flight.
    """

    def __init__(self, *, max_entries: int, ttl_s: float, timer: Callable[[], float] = time.monotonic) -> None:
        self._store: TTLCache[Hashable, V] | None = (
            TTLCache(maxsize=max_entries, ttl=ttl_s, timer=timer) if max_entries > 0 else None
        )
        self._in_flight: dict[Hashable, asyncio.Future[V]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return 0 if self._store is None else len(self._store)

    def get(self, key: Hashable) -> V | None:
        return None if self._store is None else self._store.get(key)

    def put(self, key: Hashable, value: V) -> None:
        if self._store is not None:
            self._store[key] = value

    async def get_or_compute(self, key: Hashable, compute: Callable[[], Awaitable[V]]) -> Lookup[V]:
        """The cached value, or the result of one ``compute()`` shared by every concurrent caller."""
        value = self.get(key)
        if value is not None:
            self.hits += 1
            return Lookup(value, cached=True)
        self.misses += 1
        while (in_flight := self._in_flight.get(key)) is not None:
            try:
                # shield: one joiner giving up must not cancel the computation the others wait for.
                return Lookup(await asyncio.shield(in_flight), cached=False)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if in_flight.cancelled() and task is not None and not task.cancelling():
                    continue  # the leader's caller went away, not ours: take over the computation
                raise
        return Lookup(await self._lead(key, compute), cached=False)

    async def _lead(self, key: Hashable, compute: Callable[[], Awaitable[V]]) -> V:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            value = await compute()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # mark it retrieved: there may be no joiner, and that is fine
            raise
        else:
            self.put(key, value)
            future.set_result(value)
            return value
        finally:
            del self._in_flight[key]
