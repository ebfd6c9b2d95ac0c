"""Per-client rate limiting: one token bucket per client (API-key principal, or address when auth is off).

Each bucket holds up to ``capacity`` tokens (``burst``; when ``burst`` is 0, ``max(1, ceil(rate))``) and
refills continuously at ``rate`` tokens per second. A request takes one token, or is refused with
``RateLimited`` whose ``retry_after_s`` is the exact time until the bucket holds a whole token again
(``errors.py`` rounds it up to whole seconds for the Retry-After header). Refill is computed lazily from
the elapsed time on each access; there is no background task.

Memory stays bounded however many distinct clients appear. Buckets live in a cachetools ``TTLCache``:

* its TTL is ``capacity / rate``, the time an empty bucket takes to fill. A bucket last touched longer
  ago than that is full by now, and a forgotten client gets a fresh bucket, which is full too, so
  expiring it changes no decision;
* its ``maxsize`` is ``max_clients``. Only when more than that many clients were active within one TTL
  is a not-yet-full bucket evicted (least recently used first); that client then gets a full bucket
  back, a bounded leniency accepted in exchange for bounded memory.

Used only from the event-loop thread, so neither structure needs a lock. Across replicas the same buckets
live in Redis instead (shared_limiter.py), with these as the fallback; ``bucket_key`` names a caller's bucket
for both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from cachetools import TTLCache

from captioner.config import RateLimitSettings
from captioner.errors import RateLimited

# Floating-point slack, in tokens: a bucket checked exactly 1/rate seconds after it emptied counts as
# refilled even if the arithmetic lands a hair under 1.0, and Retry-After never overshoots by rounding.
_EPSILON = 1e-9


def bucket_key(principal: str) -> str:
    """The bucket a caller's requests draw from ("key:<id>" or "ip:<address>"): the one place that decides."""
    return principal


class RateLimiter:
    """Token buckets keyed by client id. ``rate_per_s == 0`` turns limiting off."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate_per_s >= 0 or math.isinf(rate_per_s):  # also rejects NaN
            raise ValueError(f"rate_per_s must be a finite number >= 0, got {rate_per_s!r}")
        if burst < 0:
            raise ValueError(f"burst must be >= 0, got {burst!r}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {max_clients!r}")
        self.rate = float(rate_per_s)
        self.capacity = burst if burst > 0 else max(1, math.ceil(self.rate))
        self._clock = clock
        # client -> (tokens, time of that count). Tuples are replaced, not mutated, so every write
        # restarts the entry's TTL, which is measured from the last write.
        self._buckets: TTLCache[str, tuple[float, float]] | None = None
        if self.enabled:
            self._buckets = TTLCache(maxsize=max_clients, ttl=self.capacity / self.rate, timer=clock)

    @classmethod
    def from_settings(
        cls, settings: RateLimitSettings, *, max_clients: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> RateLimiter:
        return cls(settings.per_key_rps, settings.burst, max_clients=max_clients, clock=clock)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        """How many client buckets are stored (expired ones are dropped first)."""
        if self._buckets is None:
            return 0
        self._buckets.expire()
        return len(self._buckets)

    def _tokens(self, buckets: TTLCache[str, tuple[float, float]], client: str, now: float) -> float:
        tokens, then = buckets.get(client, (float(self.capacity), now))
        # max(0, ...) guards against a clock that steps backwards (fake clocks in tests, mostly).
        return min(float(self.capacity), tokens + max(0.0, now - then) * self.rate)

    def wait_s(self, client: str) -> float:
        """Seconds until ``client`` may make a request (0.0 if it may now); takes no token."""
        if self._buckets is None:
            return 0.0
        return max(0.0, 1.0 - _EPSILON - self._tokens(self._buckets, client, self._clock())) / self.rate

    def check(self, client: str) -> None:
        """Take one token from ``client``'s bucket, or raise ``RateLimited`` without taking any."""
        if self._buckets is None:
            return
        now = self._clock()
        tokens = self._tokens(self._buckets, client, now)
        if tokens + _EPSILON >= 1.0:
            self._buckets[client] = (max(0.0, tokens - 1.0), now)
            return
        self._buckets[client] = (tokens, now)
        raise RateLimited(retry_after_s=(1.0 - _EPSILON - tokens) / self.rate)
