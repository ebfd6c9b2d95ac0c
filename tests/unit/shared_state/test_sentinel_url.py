"""``redis+sentinel://`` URLs (the fleet's contract): parsed into sentinels, service, db and the master's
credentials; refused at start-up, named and without the password, when malformed. No socket: redis-py connects
on first use. The failover itself is tests/system/test_redis_sentinel.py."""

from __future__ import annotations

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool

from captioner.config import ConfigError, load_settings
from captioner.shared_state.redis_client import SentinelTarget, connect, parse_sentinel_url


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("redis+sentinel://10.0.0.1:26379/mymaster", SentinelTarget((("10.0.0.1", 26379),), "mymaster")),
        (
            "redis+sentinel://:s3cret@a:26379,b:26380,[::1]:26381/jobs/2",
            SentinelTarget((("a", 26379), ("b", 26380), ("::1", 26381)), "jobs", 2, None, "s3cret"),
        ),
        ("redis+sentinel://app:p%40ss@h:1/svc/0", SentinelTarget((("h", 1),), "svc", 0, "app", "p@ss")),
    ],
    ids=["one-sentinel", "three-with-password-and-db", "user-and-escaped-password"],
)
def test_a_sentinel_url_names_the_sentinels_the_service_and_the_db(url: str, target: SentinelTarget) -> None:
    assert parse_sentinel_url(url) == target


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://h/mymaster", "redis+sentinel://h:1", "redis+sentinel://h:1/", "redis+sentinel://h:1/m/x",
     "redis+sentinel://h:99999/m"],
)  # fmt: skip
def test_a_malformed_sentinel_url_is_refused_by_the_parser_and_at_start_up(url: str) -> None:
    with pytest.raises(ValueError, match="sentinel URL"):
        parse_sentinel_url(url)
    if "99999" not in url:  # (the config check is structural; the parser also checks the port's range)
        with pytest.raises(ConfigError, match=r"jobs\.redis_url must be redis\+sentinel://host:port"):
            load_settings(None, {"CAPTIONER_JOBS__REDIS_URL": url})


def test_a_sentinel_url_is_accepted_in_every_redis_key_and_never_echoed() -> None:
    url = "redis+sentinel://:s3cr3t-key-value@a:26379,b:26379/mymaster/0"
    keys = ("JOBS__REDIS_URL", "CACHE__REDIS_URL", "RATE_LIMIT__REDIS_URL")
    settings = load_settings(None, {**{f"CAPTIONER_{key}": url for key in keys}, "CAPTIONER_JOBS__QUEUE": "redis"})
    assert settings.jobs.redis_url == settings.cache.redis_url == settings.rate_limit.redis_url == url
    with pytest.raises(ConfigError) as refused:
        load_settings(None, {"CAPTIONER_JOBS__REDIS_URL": "redis+sentinel://:s3cr3t-key-value@a/mymaster"})
    assert "s3cr3t-key-value" not in str(refused.value)


def test_the_client_asks_the_sentinels_for_the_services_master() -> None:
    client = connect("redis+sentinel://:pw@a:26379,b:26380/mymaster/3", socket_timeout=0.5)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster" and pool.is_master
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in pool.sentinel_manager.sentinels] == [("a", 26379), ("b", 26380)]  # fmt: skip
    assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "pw"
    plain = connect("redis://127.0.0.1:6379/0")
    assert not isinstance(plain.connection_pool, SentinelConnectionPool)
