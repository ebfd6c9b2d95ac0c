"""A Redis client that can fail without hurting anyone: short timeouts behind a circuit breaker.

Redis is optional infrastructure here (a shared cache, a shared job table). When it dies or stalls, each call
must fail fast rather than add its timeout to every request. So:

- every command has a short deadline (``timeout_s``) and redis-py's own retries are off (a retry with backoff
  would multiply the deadline);
- after ``failure_threshold`` consecutive failures the breaker *opens*: calls fail at once with
  ``RedisUnavailable``, without touching the network, for a backoff that doubles on each failed probe
  (``min_backoff_s`` .. ``max_backoff_s``);
- once the backoff has passed, one call is let through as a probe (*half-open*); its success closes the
  breaker, its failure re-opens it for longer.

Warnings are logged on transitions only (open, still down at most once a minute, recovered), never per call.

URLs: ``redis://``, ``rediss://``, ``unix://`` (redis-py's own), or ``redis+sentinel://[[user]:password@]host:port
[,host:port...]/<service>[/<db>]``: the sentinels to ask for ``service``'s master (redis-py's ``Sentinel``). Each
new connection asks them where the master is, so after a failover the next call (the breaker's probe) reaches the
promoted replica. The credentials are the master's; the sentinels are asked without any.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

logger = logging.getLogger("captioner.redis")

T = TypeVar("T")

_STILL_DOWN_LOG_EVERY_S = 60.0
SENTINEL_SCHEME = "redis+sentinel://"


class RedisUnavailable(Exception):
    """Redis could not answer (down, slow, or the breaker is open)."""


class CircuitBreaker:
    """Decides whether a call may go to the backend. Pure state plus a clock, so it is tested without Redis."""

    def __init__(
        self,
        *,
        failure_threshold: int = 2,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self._clock = clock
        self._failures = 0
        self._backoff_s = min_backoff_s
        self._open_until: float | None = None  # None: closed
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def allow(self) -> bool:
        """True if a call may be made now; while half-open only one probe at a time is allowed."""
        if self._open_until is None:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True
        return True

    def release_probe(self) -> None:
        """The probe was cancelled before it had an answer: let the next call probe instead."""
        self._probing = False

    def record_success(self) -> bool:
        """Returns True if this success closed an open breaker (the backend recovered)."""
        recovered = self._open_until is not None
        self._failures = 0
        self._backoff_s = self.min_backoff_s
        self._open_until = None
        self._probing = False
        return recovered

    def record_failure(self) -> bool:
        """Returns True if this failure opened a closed breaker."""
        self._failures += 1
        if self._open_until is not None:  # a failed probe: stay open, back off further
            self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)
            self._open_until = self._clock() + self._backoff_s
            self._probing = False
            return False
        if self._failures >= self.failure_threshold:
            self._open_until = self._clock() + self._backoff_s
            return True
        return False

    @property
    def retry_in_s(self) -> float:
        return 0.0 if self._open_until is None else max(0.0, self._open_until - self._clock())


class RedisClient:
    """GET/SET/DELETE of bytes values (and ``execute``/``script`` for the rest), each bounded by ``timeout_s`` and
    guarded by a ``CircuitBreaker``.

    ``on_error(operation)`` is called for every failed or skipped call (a metric hook); ``on_state(up)`` when
    the breaker opens (False) or closes again (True).
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        timeout_s: float,
        on_error: Callable[[str], None] = lambda operation: None,
        on_state: Callable[[bool], None] = lambda up: None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.breaker = breaker or CircuitBreaker()
        self._on_error = on_error
        self._on_state = on_state
        self._last_down_log = float("-inf")
        # No retries inside redis-py: the breaker is the retry policy. Connections are made lazily on first use.
        self._client: aioredis.Redis = connect(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=30,
            max_connections=64,
        )
        self._safe_url = _without_password(url)

    async def get(self, key: str) -> bytes | None:
        value: Any = await self._call("get", lambda: self._client.get(key))
        return None if value is None else bytes(value)

    async def set(self, key: str, value: bytes, *, ttl_s: float) -> None:
        await self._call("set", lambda: self._client.set(key, value, px=max(1, int(ttl_s * 1000))))

    async def delete(self, key: str) -> None:
        await self._call("delete", lambda: self._client.delete(key))

    async def execute(self, operation: str, command: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Any other command (streams, say) on the client, under the same deadline and breaker."""
        return await self._call(operation, lambda: command(self._client))

    def script(self, operation: str, lua: str) -> Callable[[Sequence[str], Sequence[Any]], Awaitable[Any]]:
        """A Lua script as an async function of (keys, args), under the deadline and breaker (EVALSHA, loaded
        again by redis-py after a Redis restart)."""
        compiled = self._client.register_script(lua)

        async def run(keys: Sequence[str], args: Sequence[Any]) -> Any:
            return await self._call(operation, lambda: compiled(keys=list(keys), args=list(args)))

        return run

    async def ping(self) -> bool:
        try:
            await self._call("ping", lambda: self._client.ping())
        except RedisUnavailable:
            return False
        return True

    async def aclose(self) -> None:
        with contextlib.suppress(RedisError, OSError):  # closing a dead connection must not fail a shutdown
            await self._client.aclose()

    async def _call(self, operation: str, command: Callable[[], Awaitable[T]]) -> T:
        if not self.breaker.allow():
            self._on_error(operation)
            raise RedisUnavailable(f"{self.name}: redis skipped (circuit open)")
        try:
            # wait_for on top of the socket timeouts: connecting and pool waits are bounded too.
            result = await asyncio.wait_for(command(), timeout=self.timeout_s)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(operation, exc)
            raise RedisUnavailable(f"{self.name}: redis {operation} failed: {exc!r}") from exc
        except asyncio.CancelledError:
            self.breaker.release_probe()
            raise
        if self.breaker.record_success():
            logger.warning("%s: redis at %s is reachable again", self.name, self._safe_url)
            self._on_state(True)
        return result

    def _failed(self, operation: str, exc: BaseException) -> None:
        self._on_error(operation)
        was_open = self.breaker.is_open
        opened = self.breaker.record_failure()
        now = time.monotonic()
        if opened:
            self._last_down_log = now
            logger.warning(
                "%s: redis at %s failed (%s: %s); going without it, next try in %.1f s",
                self.name, self._safe_url, type(exc).__name__, exc, self.breaker.retry_in_s,
            )  # fmt: skip
            self._on_state(False)
        elif was_open and now - self._last_down_log >= _STILL_DOWN_LOG_EVERY_S:
            self._last_down_log = now
            logger.warning(
                "%s: redis at %s still unavailable (%s); next try in %.1f s",
                self.name, self._safe_url, type(exc).__name__, self.breaker.retry_in_s,
            )  # fmt: skip


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/<service>[/<db>]``; ValueError (naming the
    part, never the password) for anything else."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError(f"a sentinel URL starts with {SENTINEL_SCHEME}")
    rest = url[len(SENTINEL_SCHEME) :]
    credentials, _, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    sentinels: list[tuple[str, int]] = []
    for entry in hosts.split(","):
        host, _, port = entry.rpartition(":")
        host = host.strip("[]")  # [::1]:26379
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a sentinel URL lists host:port pairs, got {entry!r}")
        sentinels.append((host, int(port)))
    service, _, db = path.partition("/")
    if not service:
        raise ValueError("a sentinel URL names its service: redis+sentinel://host:port/<service>[/<db>]")
    if db and not db.isdigit():
        raise ValueError(f"a sentinel URL's database is a number, got {db!r}")
    username, password = None, None
    if credentials:
        user, has_password, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    return SentinelTarget(tuple(sentinels), unquote(service), int(db or 0), username, password)


def connect(url: str, **options: Any) -> aioredis.Redis:
    """A redis-py client for ``url`` (connections made on first use); a sentinel URL gives one whose connections
    go to the service's current master."""
    if not url.startswith(SENTINEL_SCHEME):
        return aioredis.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    timeouts = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=timeouts)  # type: ignore[no-untyped-call]
    client: aioredis.Redis = sentinel.master_for(
        target.service, db=target.db, username=target.username, password=target.password, **options
    )
    return client


def _without_password(url: str) -> str:
    """The URL for logs, with its secrets masked wherever they sit: ``redis://:secret@host`` becomes
    ``redis://***@host``, and ``redis://host/0?password=secret`` becomes ``redis://host/0?password=***`` (redis-py
    reads credentials from the query too)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    location, query_sep, query = rest.partition("?")
    if "@" in location:
        location = "***@" + location.rpartition("@")[2]
    if query_sep:
        query = _SECRET_QUERY.sub(r"\g<1>***", query)
    return f"{scheme}://{location}{query_sep}{query}"


# Query parameters that carry credentials (redis-py: password, username; Sentinel: sentinel_password).
_SECRET_QUERY = re.compile(r"((?:^|[&;])[^=&;]*(?:password|passwd|secret|token|username)[^=&;]*=)[^&;#]*", re.I)
