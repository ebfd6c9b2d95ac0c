"""Token buckets in Redis, shared by every replica that uses it: ``RedisTokenBucket.take(key)``.

One Lua script per request (``EVALSHA``: atomic, one round trip). It refills the key's bucket from the time
it last changed, at ``rate`` tokens per second up to ``capacity``, then takes one token or says how long until
one is there: the same arithmetic as the per-replica buckets (guard/rate_limit.py), so a caller sees the same
limit and the same Retry-After whichever decides. The time is Redis's own (``TIME``), so replicas whose clocks
disagree still share one clock. A bucket is a hash of two numbers that expires once it would be full again
(``capacity / rate`` seconds after its last take), so idle callers cost no memory.

Failures raise ``RedisUnavailable`` (from ``RedisClient``: timeouts and a circuit breaker); the caller decides
what an unanswered check means (guard/shared_limiter.py).
"""

from __future__ import annotations

import math

from captioner.shared_state.redis_client import RedisClient

KEY_PREFIX = "captioner:ratelimit:"

# KEYS[1]: the bucket. ARGV: rate (tokens/s), capacity (tokens), expiry (ms).
# Returns {1, "0"} when a token was taken, else {0, "<seconds until one is there>"} (a string: Redis would
# truncate a Lua number to an integer).
_TAKE = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local stored = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(stored[1])
local at = tonumber(stored[2])
if tokens == nil or at == nil then
  tokens = capacity
  at = now
end
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
if tokens + 1e-9 >= 1 then
  tokens = math.max(0, tokens - 1)
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%.17g', now))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1, '0'}
end
return {0, string.format('%.17g', (1 - 1e-9 - tokens) / rate)}
"""


def _arguments(rate_per_s: float, capacity: int) -> list[str | int | float]:
    if not rate_per_s > 0 or capacity < 1:
        raise ValueError("a shared token bucket needs rate_per_s > 0 and capacity >= 1")
    expiry_ms = math.ceil(capacity / rate_per_s * 1000) + 1000  # full again by then: forgetting it is exact
    return [repr(float(rate_per_s)), capacity, expiry_ms]


class RedisTokenBucket:
    def __init__(
        self,
        client: RedisClient,
        *,
        rate_per_s: float | None = None,
        capacity: int | None = None,
        prefix: str = KEY_PREFIX,
    ) -> None:
        """``rate_per_s`` and ``capacity``: every bucket's limit; None: each ``take`` names its own."""
        self.client = client
        self._prefix = prefix
        self._args = None if rate_per_s is None or capacity is None else _arguments(rate_per_s, capacity)
        self._take = client.script("rate_limit", _TAKE)

    async def take(self, key: str, *, rate_per_s: float | None = None, capacity: int | None = None) -> float | None:
        """Take a token from ``key``'s bucket: None if taken, else the seconds until one is there. ``rate_per_s`` and
        ``capacity``: this caller's own limit (a tenant's), instead of the bucket's.

        Raises ``RedisUnavailable`` when Redis can't answer."""
        args = self._args if rate_per_s is None or capacity is None else _arguments(rate_per_s, capacity)
        if args is None:
            raise ValueError("this bucket has no limit of its own: name rate_per_s and capacity")
        taken, wait = await self._take([self._prefix + key], args)
        return None if int(taken) == 1 else float(wait)

    async def aclose(self) -> None:
        await self.client.aclose()
