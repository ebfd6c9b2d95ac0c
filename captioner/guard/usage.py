"""Usage per tenant: the daily image quota (429 ``quota_exceeded`` until UTC midnight) and the counters billing reads.

Each image a tenant sends (a sync caption, ``POST /``, an async job) is counted against its ``max_images_per_day``
when it is admitted, before its body is read; past the quota it is refused with ``Retry-After`` = the seconds until
the day (UTC) ends, when the count starts again. How it then went is counted too: ``captioned`` (the model made the
captions), ``cached``, ``rejected`` (a 4xx: the caller's image or request) or ``failed`` (a 5xx: the server's fault;
such an image is given back to the quota). ``quota_exceeded`` counts the refusals.

The counts live in Redis when the replicas have one (``jobs.redis_url``, else ``rate_limit.redis_url``, else
``cache.redis_url``): one quota per tenant for the whole fleet, and ``captioner usage export`` reads them. Without
Redis, or while it can't answer, each replica counts on its own (a tenant may then get up to N quotas over N
replicas). ``captioner_tenant_images_total{tenant,outcome}`` counts the same, per replica, by tenant name.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from captioner.config import Settings
from captioner.errors import QuotaExceeded
from captioner.guard.tenants import Tenant
from captioner.observability.metrics import Metrics
from captioner.shared_state.redis_client import RedisClient, RedisUnavailable
from captioner.shared_state.redis_usage import RedisUsage

IMAGES = "images"  # the counter the quota is kept on: images admitted, less those the server failed
CAPTIONED, CACHED, REJECTED, FAILED, REFUSED = "captioned", "cached", "rejected", "failed", "quota_exceeded"
OUTCOMES = (CAPTIONED, CACHED, REJECTED, FAILED, REFUSED)
COUNTERS = (IMAGES, *OUTCOMES)
# How long a day's counts are kept in Redis: a year and a bit, so that last year's same month can still be billed.
RETENTION_S = 400 * 86400
_MAX_PENDING_WRITES = 10_000


def utc_day(now: float) -> str:
    """The UTC day of the wall-clock time ``now`` (seconds since the epoch), as YYYY-MM-DD."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def seconds_until_reset(now: float) -> float:
    """Seconds from ``now`` until the next UTC midnight, when every daily quota starts again (in (0, 86400])."""
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(days=1)).timestamp() - now


def quota_refusal(tenant: str, limit: int, now: float) -> QuotaExceeded:
    return QuotaExceeded(
        f"tenant {tenant} has sent its {limit} images of today (UTC); the quota resets at midnight UTC",
        retry_after_s=seconds_until_reset(now),
    )


def usage_redis_url(settings: Settings) -> str:
    """The Redis the usage counters live in ("" when the replicas share none): the jobs' first, which the fleet runs
    persistent and never evicting (billing data must not be an LRU's to drop), then the rate limits', the cache's."""
    return settings.jobs.redis_url or settings.rate_limit.redis_url or settings.cache.redis_url


@dataclass
class LocalUsage:
    """This replica's own counts: the quota without Redis. Only today's are kept."""

    day: str = ""
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def _today(self, day: str) -> dict[tuple[str, str], int]:
        if day != self.day:
            self.day, self.counts = day, {}
        return self.counts

    def take(self, day: str, tenant: str, counter: str, limit: int) -> int | None:
        counts = self._today(day)
        count = counts.get((tenant, counter), 0) + 1
        if limit > 0 and count > limit:
            return None
        counts[(tenant, counter)] = count
        return count

    def add(self, day: str, tenant: str, counter: str, delta: int = 1) -> None:
        counts = self._today(day)
        counts[(tenant, counter)] = max(0, counts.get((tenant, counter), 0) + delta)


class TenantUsage:
    """The quota decision, and the counts. Only a tenant with a quota waits for Redis (one atomic call per image);
    every other count is written in the background, off the request's path."""

    def __init__(
        self,
        metrics: Metrics,
        shared: RedisUsage | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self.shared = shared
        self.local = LocalUsage()
        self._clock = clock
        self._writes: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> TenantUsage:
        url = usage_redis_url(settings)
        if not url:
            return cls(metrics)
        errors = metrics.usage_backend_errors
        client = RedisClient(
            url, name="usage", timeout_s=settings.rate_limit.redis_timeout_s, on_error=lambda op: errors.inc()
        )
        return cls(metrics, RedisUsage(client, ttl_s=RETENTION_S))

    async def admit(self, tenant: Tenant | None) -> None:
        """Count one image of ``tenant`` against its daily quota, or raise ``QuotaExceeded`` (429). None (auth
        off): nothing is counted."""
        if tenant is None:
            return
        now = self._clock()
        day, limit = utc_day(now), tenant.max_images_per_day
        if not limit:  # nothing to decide: counted for the usage export only
            self._count(day, tenant.name, IMAGES, 1)
            return
        if await self._take(day, tenant.name, limit) is None:
            self.record(tenant.name, REFUSED)
            raise quota_refusal(tenant.name, limit, now)

    async def _take(self, day: str, tenant: str, limit: int) -> int | None:
        if self.shared is not None:
            try:
                return await self.shared.take(day, tenant, IMAGES, limit)
            except RedisUnavailable:
                pass  # counted in captioner_usage_backend_errors_total; this replica's own counts decide
        return self.local.take(day, tenant, IMAGES, limit)

    def record(self, tenant: str | None, outcome: str) -> None:
        """How an admitted image went (or a refusal): the metric, and the day's counter; a server failure gives the
        image back to the quota."""
        if tenant is None:
            return
        self._metrics.tenant_images.labels(tenant, outcome).inc()
        day = utc_day(self._clock())
        self._count(day, tenant, outcome, 1)
        if outcome == FAILED:
            self._count(day, tenant, IMAGES, -1)

    def give_back(self, tenant: str | None) -> None:
        """An admitted image that was no new work after all (a replayed ``Idempotency-Key``: the first request's job
        answers it): it leaves the quota and the counts."""
        if tenant is not None:
            self._count(utc_day(self._clock()), tenant, IMAGES, -1)

    def _count(self, day: str, tenant: str, counter: str, delta: int) -> None:
        self.local.add(day, tenant, counter, delta)
        if self.shared is None:
            return
        if len(self._writes) >= _MAX_PENDING_WRITES:  # Redis this slow is failing: don't pile up tasks
            self._metrics.usage_backend_errors.inc()
            return
        write = asyncio.get_running_loop().create_task(self._write(day, tenant, counter, delta))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)

    async def _write(self, day: str, tenant: str, counter: str, delta: int) -> None:
        assert self.shared is not None
        # A failure is counted in captioner_usage_backend_errors_total; the quota falls back to local counts.
        with contextlib.suppress(RedisUnavailable):
            await self.shared.add(day, tenant, counter, delta)

    async def aclose(self) -> None:
        if self._writes:  # the last counts: each bounded by the client's timeout
            await asyncio.wait(set(self._writes), timeout=5)
        if self.shared is not None:
            await self.shared.aclose()


def outcome_of(status_code: int) -> str:
    """The usage outcome of an error answer: the caller's (4xx) or the server's (5xx)."""
    return FAILED if status_code >= 500 else REJECTED


def answered_outcome(cached: bool) -> str:
    """The usage outcome of a caption answer: from the cache (as the caller was told) or computed."""
    return CACHED if cached else CAPTIONED


def failed_outcome(error: BaseException) -> str:
    """The usage outcome of a request that ended in ``error``: its status code's (a CaptionerError's), else 500's."""
    return outcome_of(getattr(error, "status_code", 500))
