"""When the shared rate limiter uses Redis at all (no Redis call here: tests/integration/guard/test_shared_limiter.py
fails it against a dead port, tests/system/test_shared_rate_limit.py shares it over a real one)."""

from __future__ import annotations

from pathlib import Path

from captioner.guard.shared_limiter import SharedRateLimiter
from captioner.observability.metrics import Metrics
from tests.conftest import free_port, tiny_settings


def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def test_redis_is_used_only_when_limits_are_on_and_a_url_is_set(tiny_model_dir: Path) -> None:
    def limiter(**sections: dict[str, object]) -> SharedRateLimiter:
        return SharedRateLimiter.from_settings(tiny_settings(tiny_model_dir, **sections), Metrics())

    on = {"per_key_rps": 1.0, "burst": 2}
    assert limiter(rate_limit=on).shared is None  # no Redis anywhere: per replica, as before
    assert limiter(rate_limit=on, cache={"redis_url": dead_redis_url()}).shared is not None  # cache.redis_url
    assert limiter(rate_limit={**on, "redis_url": dead_redis_url()}).shared is not None
    off = limiter(rate_limit={"redis_url": dead_redis_url()}, cache={"redis_url": dead_redis_url()})
    assert not off.enabled and off.shared is None  # limits off: never a Redis call
