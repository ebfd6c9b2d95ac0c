"""A Redis URL's credentials never reach a log line, wherever the URL holds them: the user info
(``redis://:pw@host``) or the query (``redis://host/0?password=pw``, which redis-py reads too).

The client's own warnings are checked as logged records (caplog: before any formatter), and the formatters' net
(``observability/redaction.py``) on the finished line. No socket: the Redis commands are replaced by failing and
succeeding stand-ins."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from captioner.observability.logs import JsonFormatter, TextFormatter
from captioner.observability.redaction import redact
from captioner.shared_state.redis_client import CircuitBreaker, RedisClient, RedisUnavailable

SECRET = "s3cret-Pa55"
URLS = [
    f"redis://cache:6379/0?password={SECRET}",
    f"redis://cache:6379/0?socket_keepalive=true&password={SECRET}&health_check_interval=5",
    f"rediss://:{SECRET}@cache:6380/1",
    f"redis://admin:{SECRET}@cache:6379/0",
    f"redis+sentinel://s1:26379,s2:26379/mymaster/0?sentinel_password={SECRET}",
]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Commands:
    """Stands in for redis-py's client: ``get`` fails while ``down``."""

    def __init__(self) -> None:
        self.down = True

    async def get(self, key: str) -> Any:
        if self.down:
            raise RedisConnectionError("Error 111 connecting to cache:6379. Connection refused.")
        return b"value"

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("url", URLS[:4])  # schemes redis-py opens
@pytest.mark.anyio
async def test_the_client_never_logs_the_password_of_its_url(url: str, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    client = RedisClient(url, name="jobs", timeout_s=0.1, breaker=CircuitBreaker(failure_threshold=2, clock=clock))
    commands = Commands()
    client._client = commands  # type: ignore[assignment]
    caplog.set_level(logging.DEBUG, logger="captioner")
    for _ in range(2):  # the second failure opens the breaker: "redis at <url> failed"
        with pytest.raises(RedisUnavailable):
            await client.get("k")
    clock.now += 120  # past the backoff: one probe, which fails and is logged as "still unavailable"
    with pytest.raises(RedisUnavailable):
        await client.get("k")
    clock.now += 120
    commands.down = False
    assert await client.get("k") == b"value"  # "reachable again"

    messages = [record.getMessage() for record in caplog.records]
    assert any("failed" in m for m in messages) and any("reachable again" in m for m in messages)
    assert all(SECRET not in m for m in messages), messages
    assert all("cache:63" in m for m in messages if "redis at" in m)  # the host is still named


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_the_formatters_mask_a_url_password_whoever_logged_it(url: str, formatter: logging.Formatter) -> None:
    record = logging.LogRecord("redis", logging.ERROR, __file__, 1, "cannot connect to %s", (url,), None)
    line = formatter.format(record)
    assert SECRET not in line and "***" in line
    assert SECRET not in redact(f"ConnectionError('{url}')")
