"""The daily quota's arithmetic (the UTC day, the seconds until it resets) and its decisions, on this replica's own
counts (the Redis counts run the same rule in Lua: tests/system/test_tenants.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from prometheus_client import generate_latest

from captioner.errors import QuotaExceeded
from captioner.guard.tenants import Tenant
from captioner.guard.usage import (
    CACHED,
    CAPTIONED,
    FAILED,
    IMAGES,
    REFUSED,
    REJECTED,
    LocalUsage,
    TenantUsage,
    outcome_of,
    seconds_until_reset,
    utc_day,
)
from captioner.observability.metrics import Metrics
from tests.support.clock import FakeClock
from tests.support.metrics import metric_value


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_the_day_is_utcs_and_resets_at_its_midnight() -> None:
    assert utc_day(at("2026-03-01T23:59:59")) == "2026-03-01"
    assert utc_day(at("2026-03-02T00:00:00")) == "2026-03-02"
    assert seconds_until_reset(at("2026-03-01T23:59:59")) == pytest.approx(1)
    assert seconds_until_reset(at("2026-03-01T00:00:00")) == pytest.approx(86400)
    assert seconds_until_reset(at("2026-03-01T12:00:00.5")) == pytest.approx(43199.5)


def test_local_counts_stop_at_the_limit_and_start_again_the_next_day() -> None:
    usage = LocalUsage()
    assert [usage.take("d1", "web", IMAGES, 2) for _ in range(3)] == [1, 2, None]  # the refusal counts nothing
    assert usage.take("d1", "other", IMAGES, 2) == 1  # a quota per tenant
    assert usage.take("d2", "web", IMAGES, 2) == 1  # a new day
    assert [usage.take("d2", "free", IMAGES, 0) for _ in range(3)] == [1, 2, 3]  # 0: unlimited
    usage.add("d2", "web", IMAGES, -5)
    assert usage.counts[("web", IMAGES)] == 0  # a refund never goes below 0


def test_the_quota_refuses_with_retry_after_until_midnight_and_counts_by_tenant_name() -> None:
    clock = FakeClock(at("2026-03-01T23:00:00"))
    metrics = Metrics()
    usage = TenantUsage(metrics, clock=clock)
    web = Tenant("web", max_images_per_day=2)

    async def scenario() -> None:
        await usage.admit(web)
        usage.record("web", CAPTIONED)
        await usage.admit(web)
        usage.record("web", FAILED)  # the server's fault: the image is given back
        await usage.admit(web)
        usage.record("web", CACHED)
        with pytest.raises(QuotaExceeded) as refused:
            await usage.admit(web)
        assert (refused.value.status_code, refused.value.code) == (429, "quota_exceeded")
        assert refused.value.headers["Retry-After"] == "3600"  # one hour to midnight UTC
        usage.give_back("web")  # a replayed Idempotency-Key: no new work
        await usage.admit(web)
        with pytest.raises(QuotaExceeded):
            await usage.admit(web)
        clock.advance(3600)  # midnight
        await usage.admit(web)
        await usage.admit(None)  # auth off: nothing counted, nothing refused

    asyncio.run(scenario())
    text = generate_latest(metrics.registry).decode()
    for outcome, count in ((CAPTIONED, 1), (FAILED, 1), (CACHED, 1), (REFUSED, 2)):
        assert metric_value(text, "captioner_tenant_images_total", f'tenant="web",outcome="{outcome}"') == count


def test_an_error_is_the_callers_below_500_else_the_servers() -> None:
    assert [outcome_of(s) for s in (400, 413, 422, 500, 503, 504)] == [REJECTED] * 3 + [FAILED] * 3
