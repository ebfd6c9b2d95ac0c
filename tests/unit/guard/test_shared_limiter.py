"""When the shared rate limiter uses Redis at all (no Redis call here: tests/integration/guard/test_shared_limiter.py
fails it against a dead port, tests/system/test_shared_rate_limit.py shares it over a real one)."""

from __future__ import annotations

from captioner.guard.shared_limiter import SharedRateLimiter
from captioner.observability.metrics import Metrics
from tests.support.model import tiny_settings

NEVER_CONTACTED = "redis://redis.invalid:6379/0"  # a unit test opens no socket: the guard fails it if one is tried


def test_redis_is_used_only_when_limits_are_on_and_a_url_is_set() -> None:
    def limiter(**sections: dict[str, object]) -> SharedRateLimiter:
        return SharedRateLimiter.from_settings(tiny_settings(**sections), Metrics())

    on = {"per_key_rps": 1.0, "burst": 2}
    assert limiter(rate_limit=on).shared is None  # no Redis anywhere: per replica, as before
    assert limiter(rate_limit=on, cache={"redis_url": NEVER_CONTACTED}).shared is not None  # cache.redis_url
    assert limiter(rate_limit={**on, "redis_url": NEVER_CONTACTED}).shared is not None
    off = limiter(rate_limit={"redis_url": NEVER_CONTACTED}, cache={"redis_url": NEVER_CONTACTED})
    assert not off.enabled and off.shared is None  # limits off: never a Redis call
