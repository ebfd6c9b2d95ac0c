"""Which ratings count toward a variant's approval: once per caller and image, and only for an image served to them.

Feedback is open to any caller, and the canary analysis compares approval per variant, so without this rule one
caller could force a canary's rollback (or block it) by rating one image, or images never captioned for them,
over and over. Every rating is still kept (the record says ``counted``), and the answer is the same 202.

``ServedImages`` remembers each (caller, image) pair the server captioned, with the variant that answered, for
``feedback.served_ttl_s``: the window in which a rating can count. A rating counts when

- the pair was served (a rating by ``job_id`` is proof itself: the job is the caller's, and finished), and
- it is that caller's first rating of that image (marked for ``feedback.retention_s``, as long as ratings are kept).

The caller is the one rate limits count (``guard.caller.principal_of``): the API key, or the client's address.
Both memories are bounded: at most ``feedback.max_served`` pairs each in this process, oldest first. With a Redis
feedback store they are shared by every replica, so a caption served by one replica and rated through another
counts, and a second rating through a third doesn't: a pair is written to Redis in the background (the caption's
answer never waits for it), and the first rating of a pair is decided there by ``SET NX``. Without Redis, a
rating counts only on the replica that served the caption.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache

from captioner.shared_state.redis_client import RedisClient, RedisUnavailable

logger = logging.getLogger("captioner.feedback")

SERVED_PREFIX = "captioner:feedback:served:v1:"
RATED_PREFIX = "captioner:feedback:rated:v1:"
NOT_SERVED, REPEATED = "not_served", "repeated"
# Writes of served pairs waiting for Redis at most; past it a pair is remembered in this process only (a slow Redis
# must not pile up tasks on the event loop).
_MAX_PENDING_WRITES = 1000


@dataclass(frozen=True)
class Credit:
    """What a rating earns: the variant that served the image (None: not served to this caller), whether it
    counts toward that variant's approval, and if not, why (``NOT_SERVED`` or ``REPEATED``)."""

    variant: str | None
    counted: bool
    why_not: str | None = None


def credit(served_variant: str | None, first_rating: bool) -> Credit:
    """The rule: a rating counts when the image was served to the caller and it is their first rating of it."""
    if served_variant is None:
        return Credit(None, counted=False, why_not=NOT_SERVED)
    if not first_rating:
        return Credit(served_variant, counted=False, why_not=REPEATED)
    return Credit(served_variant, counted=True)


def pair_key(caller: str, image_sha256: str) -> str:
    """One short name for (caller, image); a hash, so that Redis key names don't carry callers' identities."""
    return hashlib.sha256(f"{caller}\0{image_sha256}".encode()).hexdigest()


class ServedImages:
    def __init__(
        self,
        *,
        served_ttl_s: float,
        rated_ttl_s: float,
        max_entries: int,
        redis: RedisClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.served_ttl_s = served_ttl_s
        self.rated_ttl_s = rated_ttl_s
        self._served: TTLCache[str, str] = TTLCache(maxsize=max_entries, ttl=served_ttl_s, timer=clock)
        self._rated: TTLCache[str, bool] = TTLCache(maxsize=max_entries, ttl=rated_ttl_s, timer=clock)
        self._redis = redis
        self._writes: set[asyncio.Task[Any]] = set()

    def remember(self, caller: str, image_sha256: str, variant: str) -> None:
        """The server answered ``image_sha256`` to ``caller`` from ``variant`` (on the event loop; never waits)."""
        key = pair_key(caller, image_sha256)
        if self._served.get(key) == variant:
            return  # known: in Redis too since then, expiring with this entry (the same TTL from about then)
        self._served[key] = variant
        if self._redis is None or len(self._writes) >= _MAX_PENDING_WRITES:
            return
        task = asyncio.get_running_loop().create_task(self._write_served(key, variant))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def credit(self, caller: str, image_sha256: str, *, proven_variant: str | None = None) -> Credit:
        """What a rating of ``image_sha256`` by ``caller`` earns; a counted one is marked, so the next won't be.

        ``proven_variant``: the image is known to have been served to the caller by that variant (a job of
        theirs). Raises ``RedisUnavailable`` when the shared memory can't answer.
        """
        key = pair_key(caller, image_sha256)
        variant = proven_variant or await self._served_variant(key)
        if variant is None:
            return credit(None, first_rating=False)  # and nothing is marked: a later served caption may count
        return credit(variant, await self._first_rating(key))

    async def forget_rating(self, caller: str, image_sha256: str) -> None:
        """Undo a counted rating's mark: it could not be kept after all, so the caller's retry should count."""
        key = pair_key(caller, image_sha256)
        self._rated.pop(key, None)
        if self._redis is not None:
            try:
                await self._redis.delete(RATED_PREFIX + key)
            except RedisUnavailable:
                logger.warning("could not unmark a rating that was not kept; a retry of it won't count")

    async def aclose(self) -> None:
        """Wait for the served pairs still being written (each bounded by the Redis client's timeout)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def _write_served(self, key: str, variant: str) -> None:
        assert self._redis is not None
        # A failure is counted by the client's error metric; the pair stays known to this process.
        with contextlib.suppress(RedisUnavailable):
            await self._redis.set(SERVED_PREFIX + key, variant.encode(), ttl_s=self.served_ttl_s)

    async def _served_variant(self, key: str) -> str | None:
        variant = self._served.get(key)
        if variant is not None or self._redis is None:
            return variant
        stored = await self._redis.get(SERVED_PREFIX + key)
        return None if stored is None else stored.decode()

    async def _first_rating(self, key: str) -> bool:
        if self._redis is not None:  # shared: the first rating through any replica wins, once
            return bool(await self._redis.execute("feedback_rated", _mark(RATED_PREFIX + key, self.rated_ttl_s)))
        if key in self._rated:
            return False
        self._rated[key] = True
        return True


def _mark(key: str, ttl_s: float) -> Callable[[Any], Any]:
    async def set_if_absent(redis: Any) -> bool:
        return bool(await redis.set(key, b"1", nx=True, px=max(1, int(ttl_s * 1000))))

    return set_if_absent
