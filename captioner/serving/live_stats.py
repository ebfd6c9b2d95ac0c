"""What each variant's requests looked like, for the canary analysis: counts, errors, latency, confidence.

``VariantStats`` only ever grows (like Prometheus counters), and ``snapshot()`` copies it into a frozen
``StatsSnapshot``; ``later.minus(earlier)`` is then exactly the requests in between, which is how the canary
analysis compares production and canary over the same period. Latency goes into fixed log-spaced buckets (5 %
apart, 1 ms to ~5 min), so a p95 is accurate to 5 % and differences of snapshots stay exact.

Counted as requests: answers the variant's model computed, and requests it failed with a 5xx; client errors
(4xx) are the caller's, not the model's, and are left out. Cache hits (either level) are counted apart, in
``cache_hits``, and count toward neither ``requests`` (the canary's ``min_requests``) nor the mean confidence: a
hit repeats an answer counted once already, so one caller resending one image would otherwise weigh as any
number of requests, and could push a canary to be judged, or its confidence either way. Latency: the answers the
model computed and the failures. Used from the event loop thread only.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

_FIRST_S = 0.001
_RATIO = 1.05
_EDGES = tuple(_FIRST_S * _RATIO**k for k in range(260))  # up to ~320 s; slower falls in the last bucket


@dataclass(frozen=True)
class StatsSnapshot:
    requests: int = 0
    errors: int = 0
    latency_counts: tuple[int, ...] = (0,) * (len(_EDGES) + 1)
    confidence_sum: float = 0.0
    confidence_n: int = 0
    cache_hits: int = 0  # answered from the cache: not in requests, nor in the confidence

    def minus(self, earlier: StatsSnapshot) -> StatsSnapshot:
        return StatsSnapshot(
            requests=self.requests - earlier.requests,
            errors=self.errors - earlier.errors,
            latency_counts=tuple(a - b for a, b in zip(self.latency_counts, earlier.latency_counts, strict=True)),
            confidence_sum=self.confidence_sum - earlier.confidence_sum,
            confidence_n=self.confidence_n - earlier.confidence_n,
            cache_hits=self.cache_hits - earlier.cache_hits,
        )

    def plus(self, other: StatsSnapshot) -> StatsSnapshot:
        """Two sets of requests together (two replicas' windows, for the fleet's canary analysis)."""
        return StatsSnapshot(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            latency_counts=tuple(a + b for a, b in zip(self.latency_counts, other.latency_counts, strict=True)),
            confidence_sum=self.confidence_sum + other.confidence_sum,
            confidence_n=self.confidence_n + other.confidence_n,
            cache_hits=self.cache_hits + other.cache_hits,
        )

    @property
    def error_ratio(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def mean_confidence(self) -> float | None:
        return self.confidence_sum / self.confidence_n if self.confidence_n else None

    def latency_quantile(self, q: float) -> float | None:
        """The upper edge of the bucket holding the ``q`` quantile (seconds), or None with no samples."""
        total = sum(self.latency_counts)
        if not total:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for index, count in enumerate(self.latency_counts):
            seen += count
            if seen >= rank:
                return _EDGES[min(index, len(_EDGES) - 1)]
        return _EDGES[-1]  # pragma: no cover - seen reaches total above

    @property
    def p95_s(self) -> float | None:
        return self.latency_quantile(0.95)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_ratio": self.error_ratio,
            "p95_s": self.p95_s,
            "mean_confidence": self.mean_confidence,
            "cache_hits": self.cache_hits,
        }


class VariantStats:
    def __init__(self) -> None:
        self._requests = 0
        self._errors = 0
        self._latency = [0] * (len(_EDGES) + 1)
        self._confidence_sum = 0.0
        self._confidence_n = 0
        self._cache_hits = 0

    def cache_hit(self) -> None:
        self._cache_hits += 1

    def answered(self, latency_s: float | None, confidence: float | None) -> None:
        """An answer the model computed (never a cache hit: ``cache_hit``)."""
        self._requests += 1
        if latency_s is not None:
            self._latency[bisect.bisect_left(_EDGES, latency_s)] += 1
        if confidence is not None:
            self._confidence_sum += confidence
            self._confidence_n += 1

    def failed(self, latency_s: float | None) -> None:
        self._requests += 1
        self._errors += 1
        if latency_s is not None:
            self._latency[bisect.bisect_left(_EDGES, latency_s)] += 1

    def snapshot(self) -> StatsSnapshot:
        return StatsSnapshot(
            requests=self._requests,
            errors=self._errors,
            latency_counts=tuple(self._latency),
            confidence_sum=self._confidence_sum,
            confidence_n=self._confidence_n,
            cache_hits=self._cache_hits,
        )
