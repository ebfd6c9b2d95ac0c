"""Per-tenant daily usage counters in Redis, shared by every replica: the daily quota and the billing export.

One hash per UTC day, ``captioner:usage:<YYYY-MM-DD>``, with a field ``<tenant>:<counter>`` per counter (tenant
names have no ``:``). ``take`` counts one image against a tenant's quota in one atomic Lua call (``HINCRBY``, undone
when it would pass the limit), so N replicas give a tenant its quota once. Each hash expires ``ttl_s`` after its
last write: long enough to bill from. Every call may raise ``RedisUnavailable``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from captioner.shared_state.redis_client import RedisClient

KEY_PREFIX = "captioner:usage:"

# KEYS[1]: the day's hash. ARGV: field, limit (0: none), expiry (s). Returns the count after this image, or -1
# when the limit was reached (nothing counted).
_TAKE = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local limit = tonumber(ARGV[2])
if limit > 0 and n > limit then
  redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
  return -1
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return n
"""

# KEYS[1]: the day's hash. ARGV: field, delta, expiry (s). A count never goes below 0 (a refund after midnight).
_ADD = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if n < 0 then
  redis.call('HSET', KEYS[1], ARGV[1], 0)
  n = 0
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return n
"""


def field_of(tenant: str, counter: str) -> str:
    return f"{tenant}:{counter}"


class RedisUsage:
    def __init__(self, client: RedisClient, *, ttl_s: float) -> None:
        self.client = client
        self._ttl = max(1, int(ttl_s))
        self._take = client.script("usage_take", _TAKE)
        self._add = client.script("usage_add", _ADD)

    async def take(self, day: str, tenant: str, counter: str, limit: int) -> int | None:
        """Count one more under ``counter`` unless that passes ``limit`` (0: none): the count, or None."""
        count = int(await self._take([KEY_PREFIX + day], [field_of(tenant, counter), limit, self._ttl]))
        return None if count < 0 else count

    async def add(self, day: str, tenant: str, counter: str, delta: int = 1) -> None:
        await self._add([KEY_PREFIX + day], [field_of(tenant, counter), delta, self._ttl])

    async def day(self, day: str) -> dict[str, dict[str, int]]:
        """tenant -> counter -> count, for one day (empty when nothing was counted, or it expired)."""

        async def read(redis: Any) -> Mapping[Any, Any]:
            result: Mapping[Any, Any] = await redis.hgetall(KEY_PREFIX + day)
            return result

        rows: dict[str, dict[str, int]] = {}
        for raw_field, raw_value in (await self.client.execute("usage_read", read)).items():
            tenant, _, counter = bytes(raw_field).decode().rpartition(":")
            rows.setdefault(tenant, {})[counter] = int(raw_value)
        return rows

    async def aclose(self) -> None:
        await self.client.aclose()
