"""The durable job queue's Redis side: one stream, one consumer group, and a Lua script for each step that must
be atomic. Bytes in, bytes out: what a job means is ``jobs/durable_queue.py``'s business.

Keys (``v1``: bump when a format changes):
- ``captioner:jobs:v1``: the stream. One entry per job not yet ended (fields ``job``: its id, ``payload``: its
  parameters). An entry is acked *and deleted* when its job ends, so XLEN is the backlog (waiting + running).
- ``captioner:job:v1:<id>``: the job's record (JSON), the key ``RedisJobStore`` uses too; it lives ``ttl_s``
  after its last change.
- ``captioner:job-image:v1:<id>``: the image bytes, with a TTL of ``ttl_s`` from submission; deleted when the
  job ends.
- ``captioner:job-key:v1:<hash>``: an Idempotency-Key's job, ``"<job id> <fingerprint>"``, TTL ``ttl_s``.

Delivery: XREADGROUP hands new entries to this consumer. An entry idle (no heartbeat) for longer than the lease
is taken over by another consumer's XAUTOCLAIM; its delivery count (from XPENDING) is the attempt number. A
worker heartbeats the entries it runs with XCLAIM JUSTID, which resets their idle time but not their count, and
only for entries it still owns. ``release`` swaps an entry it owns for a new one (a job handed back unrun).
``finish`` writes the final record only while the record still says processing,
so a job has exactly one result even when two deliveries race.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from captioner.shared_state.redis_client import RedisClient

STREAM = "captioner:jobs:v1"
GROUP = "captioner-workers"
RECORD_PREFIX = "captioner:job:v1:"
IMAGE_PREFIX = "captioner:job-image:v1:"
IDEMPOTENCY_PREFIX = "captioner:job-key:v1:"

# KEYS: stream, record, image, idempotency. ARGV: job id, payload, record, image, ttl ms, max length,
# has key, key value, has image. Returns {code, "<job id> <fingerprint>"}: 1 created, 0 the key's job, -1 full,
# 2 this very job exists already: an earlier try of this enqueue ran, and its answer was lost (a timeout), so
# trying again is safe.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {2, ARGV[8]} end
if ARGV[7] == '1' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {0, existing} end
end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[6]) then return {-1, ''} end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5])
if ARGV[9] == '1' then redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5]) end
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[6], '*', 'job', ARGV[1], 'payload', ARGV[2])
if ARGV[7] == '1' then redis.call('SET', KEYS[4], ARGV[8], 'PX', ARGV[5]) end
return {1, ARGV[8]}
"""

# KEYS: stream. ARGV: group, consumer, min idle ms, cursor, count. Returns {cursor, {{id, fields, deliveries}}}.
_RECLAIM = """
local claimed = redis.pcall('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
if claimed.err then
  if string.find(claimed.err, 'NOGROUP') then return {'0-0', {}} end  -- nothing was ever read
  return redis.error_reply(claimed.err)
end
local out = {}
for _, entry in ipairs(claimed[2]) do
  if entry and entry[1] then
    local info = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
    local deliveries = 1
    if info[1] then deliveries = info[1][4] end
    out[#out + 1] = {entry[1], entry[2] or {}, deliveries}
  end
end
return {claimed[1], out}
"""

# KEYS: stream. ARGV: group, consumer, entry ids. Renews the lease of the entries this consumer still owns.
_HEARTBEAT = """
local renewed = 0
for i = 3, #ARGV do
  local info = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if info[1] and info[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
"""

# KEYS: stream. ARGV: group, consumer, entry id, job id, new payload. Hands a job back: the entry this consumer
# still owns goes, a new one (never delivered: any consumer's XREADGROUP sees it now) takes its place. Returns 1, or
# 0 when another consumer owns the entry by now (it took it over after the lease: nothing to hand back).
_RELEASE = """
local info = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not (info[1] and info[1][2] == ARGV[2]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('XADD', KEYS[1], '*', 'job', ARGV[4], 'payload', ARGV[5])
return 1
"""

# KEYS: record, image. ARGV: final record, ttl ms. Returns 1 recorded, 0 already ended, -1 record expired.
_FINISH = """
local current = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[2])
if not current then return -1 end
local ok, decoded = pcall(cjson.decode, current)
if ok and decoded['status'] ~= 'processing' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: stream. ARGV: group, entry id.
_ACK = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
"""

# KEYS: stream. ARGV: group. Returns {length, pending, age of the oldest pending entry in ms (Redis' clock)}.
_STATS = """
local length = redis.call('XLEN', KEYS[1])
local summary = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(summary) ~= 'table' or summary.err or summary[1] == 0 then return {length, 0, 0} end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local first_ms = tonumber(string.match(summary[2], '^(%d+)'))
return {length, summary[1], now_ms - first_ms}
"""

# KEYS: stream. ARGV: group, idle ms, this consumer. Deletes consumers that hold nothing and were idle that long
# (each replica start adds one: without this, a group's consumer list would only grow).
_FORGET = """
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if type(consumers) ~= 'table' or consumers.err then return 0 end
local removed = 0
for _, fields in ipairs(consumers) do
  local info = {}
  for i = 1, #fields, 2 do info[fields[i]] = fields[i + 1] end
  if info['pending'] == 0 and info['idle'] > tonumber(ARGV[2]) and info['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""


@dataclass(frozen=True)
class StreamEntry:
    entry_id: str
    job_id: str
    payload: bytes
    deliveries: int  # 1 on the first delivery: the attempt number
    record: bytes | None  # the job's record now; None once it expired
    image: bytes | None  # None for a URL job, or once the image expired


@dataclass(frozen=True)
class Enqueued:
    job_id: str  # the new job, or the one an earlier request with the same idempotency key created
    created: bool
    fingerprint: str  # of the request that created ``job_id``


@dataclass(frozen=True)
class StreamStats:
    length: int  # entries in the stream: jobs waiting or running
    pending: int  # delivered to a worker and not yet ended
    oldest_pending_s: float


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw: Any) -> dict[str, bytes]:
    """Stream fields from redis-py (a dict) or from a script (a flat [name, value, ...] list)."""
    if isinstance(raw, Mapping):
        return {_text(k): bytes(v) for k, v in raw.items()}
    items = list(raw or [])
    return {_text(items[i]): bytes(items[i + 1]) for i in range(0, len(items) - 1, 2)}


class RedisJobStream:
    """The stream's operations for one consumer (one replica's worker, or an API replica that never consumes).

    ``client`` runs short commands; ``blocking`` (its timeout longer than ``block_s``) the blocking read.
    """

    def __init__(
        self,
        client: RedisClient,
        blocking: RedisClient,
        *,
        consumer: str,
        max_length: int,
        ttl_s: float,
        lease_s: float,
        block_s: float = 1.0,
    ) -> None:
        self.client = client
        self.blocking = blocking
        self.consumer = consumer
        self.max_length = max_length
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.lease_ms = max(1, int(lease_s * 1000))
        self.block_ms = max(1, int(block_s * 1000))
        self._cursor = "0-0"
        self._enqueue = client.script("enqueue", _ENQUEUE)
        self._reclaim = client.script("reclaim", _RECLAIM)
        self._heartbeat = client.script("heartbeat", _HEARTBEAT)
        self._finish = client.script("finish", _FINISH)
        self._ack = client.script("ack", _ACK)
        self._release = client.script("release", _RELEASE)
        self._stats = client.script("stats", _STATS)
        self._forget = client.script("forget", _FORGET)

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing; from the stream's start, so nothing is skipped."""
        await self.client.execute("xgroup_create", self._create_group)

    async def _create_group(self, redis: aioredis.Redis) -> None:
        try:
            await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(
        self, job_id: str, *, payload: bytes, record: bytes, image: bytes | None, key: str | None, fingerprint: str
    ) -> Enqueued | None:
        """Add a job (record, image, entry, key: all or nothing); None when the stream holds ``max_length``.
        Idempotent on ``job_id``: a repeat finds the job its first try made (``created``)."""
        keys = [STREAM, RECORD_PREFIX + job_id, IMAGE_PREFIX + job_id, IDEMPOTENCY_PREFIX + (key or "-")]
        args = [job_id, payload, record, image or b"", self.ttl_ms, self.max_length,
                "1" if key else "0", f"{job_id} {fingerprint}", "0" if image is None else "1"]  # fmt: skip
        code, value = await self._enqueue(keys, args)
        if int(code) == -1:
            return None
        existing, _, existing_fingerprint = _text(value).partition(" ")
        return Enqueued(existing, created=int(code) in (1, 2), fingerprint=existing_fingerprint)

    async def record(self, job_id: str) -> bytes | None:
        return await self.client.get(RECORD_PREFIX + job_id)

    async def read_new(self, count: int, *, block: bool) -> list[StreamEntry]:
        """Entries never delivered before, up to ``count``; waits up to ``block_s`` for one if ``block``."""

        async def read(redis: aioredis.Redis) -> Any:
            try:
                return await redis.xreadgroup(
                    GROUP, self.consumer, {STREAM: ">"}, count=count, block=self.block_ms if block else None
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._create_group(redis)  # Redis lost its data (a restart without persistence)
                return []

        response = await self.blocking.execute("xreadgroup", read)
        if isinstance(response, Mapping):  # RESP3 answers a map of stream -> entries
            response = list(response.items())
        found = [(_text(entry_id), _fields(fields), 1) for _, items in response or [] for entry_id, fields in items]
        return await self._load(found)

    async def reclaim(self, count: int) -> list[StreamEntry]:
        """Entries whose consumer stopped heartbeating for the lease, now this consumer's (delivery count + 1)."""
        cursor, claimed = await self._reclaim([STREAM], [GROUP, self.consumer, self.lease_ms, self._cursor, count])
        self._cursor = _text(cursor)
        return await self._load([(_text(e[0]), _fields(e[1]), int(e[2])) for e in claimed])

    async def _load(self, found: Sequence[tuple[str, dict[str, bytes], int]]) -> list[StreamEntry]:
        """Each entry with its job's record and image (one MGET for all)."""
        usable = [(entry_id, fields, deliveries) for entry_id, fields, deliveries in found if "job" in fields]
        for entry_id, _, _ in found:
            if not any(entry_id == kept[0] for kept in usable):
                await self.ack(entry_id)  # not a job entry (someone else's data): nothing can run it
        if not usable:
            return []
        keys: list[str] = []
        for _, fields, _ in usable:
            job_id = _text(fields["job"])
            keys += [RECORD_PREFIX + job_id, IMAGE_PREFIX + job_id]
        raw = await self.client.execute("mget", lambda redis: redis.mget(keys))
        values = [None if value is None else value if isinstance(value, bytes) else value.encode() for value in raw]
        return [
            StreamEntry(entry_id, _text(fields["job"]), fields.get("payload", b"{}"), deliveries,
                        values[2 * i], values[2 * i + 1])
            for i, (entry_id, fields, deliveries) in enumerate(usable)
        ]  # fmt: skip

    async def heartbeat(self, entry_ids: Sequence[str]) -> int:
        """Renew the lease of the entries this consumer still owns; how many it still owns."""
        if not entry_ids:
            return 0
        return int(await self._heartbeat([STREAM], [GROUP, self.consumer, *entry_ids]))

    async def finish(self, job_id: str, record: bytes) -> int:
        """Store the final record and delete the image: 1 done; 0 an earlier delivery ended it; -1 it expired."""
        return int(await self._finish([RECORD_PREFIX + job_id, IMAGE_PREFIX + job_id], [record, self.ttl_ms]))

    async def release(self, entry_id: str, job_id: str, payload: bytes) -> bool:
        """Replace this consumer's entry by a new, undelivered one for the same job; False if no longer ours."""
        return int(await self._release([STREAM], [GROUP, self.consumer, entry_id, job_id, payload])) == 1

    async def ack(self, entry_id: str) -> None:
        """This delivery is over: out of the pending list and out of the stream."""
        await self._ack([STREAM], [GROUP, entry_id])

    async def stats(self) -> StreamStats:
        length, pending, age_ms = await self._stats([STREAM], [GROUP])
        return StreamStats(int(length), int(pending), max(0.0, int(age_ms) / 1000))

    async def forget_idle_consumers(self, idle_s: float) -> int:
        """Remove consumers (other replicas, long gone) that hold no job and were idle ``idle_s``; how many."""
        return int(await self._forget([STREAM], [GROUP, max(0, int(idle_s * 1000)), self.consumer]))

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.blocking.aclose()
