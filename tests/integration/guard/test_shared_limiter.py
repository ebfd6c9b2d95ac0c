"""Shared rate limits when Redis can't answer: fail-open (this replica's buckets decide) or fail-closed (503).

Redis here is a loopback port nobody listens on (connection refused at once), so these need no redis-server;
tests/system/test_shared_rate_limit.py shares a limit over two real replicas and a real Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from captioner.errors import Overloaded, RateLimited
from captioner.guard.shared_limiter import SharedRateLimiter
from captioner.observability.metrics import Metrics
from tests.support.images import photo
from tests.support.metrics import metric_value
from tests.support.model import tiny_settings
from tests.support.redis import unreachable_redis_url
from tests.support.servers import LiveServer

pytestmark = pytest.mark.anyio

KEY = "limited-key"


def metric(metrics: Metrics, name: str, labels: str = "") -> float:
    return metric_value(generate_latest(metrics.registry).decode(), name, labels)


async def test_fail_open_falls_back_to_this_replicas_buckets_and_counts_it(tiny_model_dir: Path) -> None:
    settings = tiny_settings(
        tiny_model_dir, rate_limit={"per_key_rps": 0.01, "burst": 3, "redis_url": unreachable_redis_url()}
    )
    metrics = Metrics()
    limiter = SharedRateLimiter.from_settings(settings, metrics)
    try:
        for _ in range(3):
            await limiter.check("key:a")  # the local bucket's burst
        with pytest.raises(RateLimited):
            await limiter.check("key:a")
        await limiter.check("key:b")  # its own bucket
        assert metric(metrics, "captioner_rate_limit_fallbacks_total", 'action="local"') == 5
        assert metric(metrics, "captioner_rate_limit_backend_up") == 0  # the breaker opened
    finally:
        await limiter.aclose()


async def test_fail_closed_refuses_with_503_and_retry_after(tiny_model_dir: Path) -> None:
    limits = {"per_key_rps": 100.0, "burst": 100, "redis_url": unreachable_redis_url(), "fail_open": False}
    metrics = Metrics()
    limiter = SharedRateLimiter.from_settings(tiny_settings(tiny_model_dir, rate_limit=limits), metrics)
    try:
        for _ in range(3):
            with pytest.raises(Overloaded) as refused:
                await limiter.check("key:a")
            assert (refused.value.status_code, refused.value.code) == (503, "overloaded")
            assert int(refused.value.headers["Retry-After"]) >= 1
        assert metric(metrics, "captioner_rate_limit_fallbacks_total", 'action="refused"') == 3
    finally:
        await limiter.aclose()


@pytest.fixture(scope="module")
def closed_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    settings = tiny_settings(
        tiny_model_dir,
        auth={"api_keys": [KEY]},
        rate_limit={"per_key_rps": 100.0, "burst": 100, "redis_url": unreachable_redis_url(), "fail_open": False},
    )
    with LiveServer(settings) as server:
        yield server


def test_fail_closed_over_http_is_503_overloaded_and_health_stays_open(closed_server: LiveServer) -> None:
    response = httpx.post(
        closed_server.url + "/api/v1/caption",
        content=photo(1),
        headers={"Content-Type": "image/png", "Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 503 and response.json()["error"]["code"] == "overloaded", response.text
    assert int(response.headers["retry-after"]) >= 1
    unauthorized = httpx.post(closed_server.url + "/api/v1/caption", content=photo(1))
    assert unauthorized.status_code == 401  # keys are checked before limits: no Redis call for a stranger
    assert httpx.get(closed_server.url + "/readyz").status_code == 200
    assert closed_server.metric("captioner_rate_limit_fallbacks_total", 'action="refused"') == 1
