"""The canary analysis for a fleet: every replica's figures summed, and one verdict that all of them follow.

Alone, each replica judges the canary on its own traffic: with N replicas each sees 1/N of it (and takes N times
as long to reach ``min_requests``), their verdicts can disagree, and each rollback is counted on its own. With a
shared table (Redis: shared_state/redis_table.py), every ``canary.interval_s`` each replica

1. publishes its ``Window`` of the pair compared (its figures since it first saw this production/canary pair),
   as one row, under its own replica id, of a hash named by the pair; and reads every row back;
2. judges the sum (``total``) with ``decide``: the same rule as alone, on the fleet's traffic;
3. on a rollback, records the verdict with ``SET NX``: the replica that wrote it first leads (counts
   ``captioner_rollbacks_total``, clears the registry's alias once); every other replica, on its next check or
   at once, finds the verdict and follows it (its canary to weight 0 here, nothing else).

A row stays as long as the hash lives (``ttl_s`` past the last write of any replica), so a replica that died or
restarted keeps its requests in the sum, and a restarted one publishes a new row from zero: nothing counts
twice. Whether the canary's model can serve is judged per replica, from its own health (``decide``'s first
rule), and its rollback becomes the fleet's through the same verdict. When the table can't be reached, a replica
judges its own figures, as it would alone.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from captioner.rollout.canary import Signals, Verdict
from captioner.serving.live_stats import StatsSnapshot

WINDOWS_PREFIX = "captioner:canary:windows:v1:"
VERDICT_PREFIX = "captioner:canary:verdict:v1:"


@dataclass(frozen=True)
class Window:
    """One variant's figures over the period compared: requests (live_stats.py) and user ratings."""

    stats: StatsSnapshot = field(default_factory=StatsSnapshot)
    ratings: int = 0
    approved: float = 0.0  # ratings of 4 or 5 (a float: computed from ratios)

    def plus(self, other: Window) -> Window:
        return Window(self.stats.plus(other.stats), self.ratings + other.ratings, self.approved + other.approved)

    def signals(self, down_s: float | None = None) -> Signals:
        stats = self.stats
        return Signals(
            requests=stats.requests,
            error_ratio=stats.error_ratio,
            p95_s=stats.p95_s,
            mean_confidence=stats.mean_confidence,
            feedback=self.ratings,
            approval=self.approved / self.ratings if self.ratings > 0 else None,
            down_s=down_s,
        )


def total(rows: Iterable[dict[str, Window]]) -> dict[str, Window]:
    """The fleet's windows: each variant's summed over every replica's row."""
    summed: dict[str, Window] = {}
    for row in rows:
        for variant, window in row.items():
            summed[variant] = summed[variant].plus(window) if variant in summed else window
    return summed


def encode(windows: dict[str, Window]) -> bytes:
    """A replica's row; latency buckets are sparse (most are empty)."""
    return orjson.dumps({
        name: {
            "requests": w.stats.requests, "errors": w.stats.errors,
            "latency": {str(i): n for i, n in enumerate(w.stats.latency_counts) if n},
            "confidence_sum": w.stats.confidence_sum, "confidence_n": w.stats.confidence_n,
            "cache_hits": w.stats.cache_hits, "ratings": w.ratings, "approved": w.approved,
        }
        for name, w in windows.items()
    })  # fmt: skip


def decode(raw: bytes) -> dict[str, Window]:
    windows: dict[str, Window] = {}
    for name, row in orjson.loads(raw).items():
        latency = [0] * len(StatsSnapshot().latency_counts)
        for index, count in row["latency"].items():
            latency[int(index)] = int(count)
        stats = StatsSnapshot(
            requests=int(row["requests"]),
            errors=int(row["errors"]),
            latency_counts=tuple(latency),
            confidence_sum=float(row["confidence_sum"]),
            confidence_n=int(row["confidence_n"]),
            cache_hits=int(row["cache_hits"]),
        )
        windows[name] = Window(stats, int(row["ratings"]), float(row["approved"]))
    return windows


def pair_id(production: Any, canary: Any) -> str:
    """The production/canary pair compared, the same on every replica that serves it (from the variants' model
    settings: name, revision and path)."""
    parts = [f"{m.name}\0{m.revision}\0{m.path}" for m in (production.settings.model, canary.settings.model)]
    return hashlib.sha256("\0\0".join(parts).encode()).hexdigest()[:32]


class SharedTable(Protocol):
    """What the replicas share (shared_state/redis_table.py); every call may raise when it can't be reached."""

    async def publish(self, key: str, field: str, value: bytes, ttl_s: float) -> dict[str, bytes]: ...

    async def first(self, key: str, value: bytes, ttl_s: float) -> bytes: ...

    async def get(self, key: str) -> bytes | None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class FleetVerdict:
    verdict: Verdict
    by: str  # the replica that decided it


class FleetCanary:
    def __init__(self, table: SharedTable, *, ttl_s: float, replica: str | None = None) -> None:
        self.table = table
        self.ttl_s = ttl_s
        self.replica = replica or uuid.uuid4().hex  # a restarted process is a new replica, with a new row

    async def gather(self, pair: str, mine: dict[str, Window]) -> tuple[dict[str, Window], int]:
        """Publish this replica's windows; the fleet's, and how many replicas' rows they sum."""
        rows = await self.table.publish(WINDOWS_PREFIX + pair, self.replica, encode(mine), self.ttl_s)
        rows[self.replica] = encode(mine)  # ours, whatever the read raced with
        return total(decode(raw) for raw in rows.values()), len(rows)

    async def decided(self, pair: str) -> FleetVerdict | None:
        """The fleet's verdict on this pair, once a replica has recorded one."""
        raw = await self.table.get(VERDICT_PREFIX + pair)
        return None if raw is None else _decode_verdict(raw)

    async def settle(self, pair: str, verdict: Verdict) -> FleetVerdict:
        """Record ``verdict`` unless another replica recorded one first; the fleet's verdict either way."""
        mine = orjson.dumps({"action": verdict.action, "reason": verdict.reason, "detail": verdict.detail,
                             "by": self.replica})  # fmt: skip
        return _decode_verdict(await self.table.first(VERDICT_PREFIX + pair, mine, self.ttl_s))

    async def aclose(self) -> None:
        await self.table.aclose()


def _decode_verdict(raw: bytes) -> FleetVerdict:
    data = orjson.loads(raw)
    return FleetVerdict(Verdict(data["action"], data["reason"], data["detail"]), str(data["by"]))
