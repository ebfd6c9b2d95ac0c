"""Async job records: what ``GET /api/v1/caption/{job_id}`` reads (processing, or the finished body).

A job record lives for ``jobs.ttl_s`` after its last change. With the in-process queue (``jobs.queue: memory``)
records are kept in memory (``MemoryJobStore``, bounded by ``jobs.max_jobs``), or in Redis as well
(``RedisJobStore``) so that whichever replica the load balancer picks can answer the GET. The replica that runs
a job also keeps it locally, so it can still answer for its own jobs while Redis is down; a new job is refused
(503) while Redis is down, since no other replica could report on it. The durable queue (``jobs.queue: redis``)
keeps the same record, under the same key, itself (``jobs/durable_queue.py``).

When authentication is on, a job belongs to the API key that created it: another key gets 404 for it.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

from captioner.config import Settings
from captioner.errors import Overloaded
from captioner.observability.metrics import Metrics
from captioner.shared_state.job_stream import RECORD_PREFIX
from captioner.shared_state.redis_client import RedisClient, RedisUnavailable

logger = logging.getLogger("captioner.jobs")

JOB_ID = re.compile(r"[0-9a-f]{32}")


class StoreUnavailable(Overloaded):
    """The job store (Redis) could not answer: 503 + Retry-After. Not a 404: the job may well exist."""


JobStatus = Literal["processing", "success", "error"]


@dataclass(frozen=True)
class Job:
    job_id: str
    status: JobStatus
    result: dict[str, Any] | None  # the finished job's body: the sync 200 body, or the error body
    owner: str | None  # the API key principal that created it, when auth is on
    expires_at: float  # wall-clock seconds: records are shared between machines

    def body(self) -> dict[str, Any]:
        if self.result is None:
            return {"status": "processing", "job_id": self.job_id}
        return {**self.result, "job_id": self.job_id}

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"job_id": self.job_id, "status": self.status, "result": self.result, "owner": self.owner,
             "expires_at": self.expires_at}
        )  # fmt: skip

    @classmethod
    def from_json(cls, raw: bytes) -> Job:
        data = orjson.loads(raw)
        return cls(data["job_id"], data["status"], data["result"], data["owner"], float(data["expires_at"]))

    @classmethod
    def from_stored(cls, raw: bytes | None, job_id: str) -> Job | None:
        """A record read back from Redis; an unreadable one is logged and treated as absent."""
        if raw is None:
            return None
        try:
            return cls.from_json(raw)
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring an unreadable job record %s in Redis", job_id)
            return None


class JobStore(Protocol):
    async def add(self, job: Job) -> None:
        """Record a new job; raises ``Overloaded`` when it can't be kept."""

    async def update(self, job: Job) -> None:
        """Record a finished job; best effort, never raises."""

    async def get(self, job_id: str) -> Job | None: ...

    async def aclose(self) -> None: ...


class MemoryJobStore:
    """Jobs of this process, oldest first. Full: the oldest finished job goes; all running: new ones are refused."""

    def __init__(self, *, max_jobs: int, clock: Callable[[], float] = time.time) -> None:
        self.max_jobs = max_jobs
        self._clock = clock
        # Ordered by last change, which is also the order of expiry (every record lives ttl_s after its change).
        self._jobs: OrderedDict[str, Job] = OrderedDict()

    def __len__(self) -> int:
        return len(self._jobs)

    async def add(self, job: Job) -> None:
        self._expire()
        if len(self._jobs) >= self.max_jobs:
            finished = next((job_id for job_id, j in self._jobs.items() if j.status != "processing"), None)
            if finished is None:
                raise Overloaded(f"{self.max_jobs} async jobs are already running", retry_after_s=1)
            del self._jobs[finished]
        self._jobs[job.job_id] = job

    async def update(self, job: Job) -> None:
        self._jobs[job.job_id] = job
        self._jobs.move_to_end(job.job_id)
        while len(self._jobs) > self.max_jobs:
            self._jobs.popitem(last=False)

    async def get(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None or job.expires_at <= self._clock():
            return None
        return job

    async def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    async def aclose(self) -> None:
        pass  # nothing to release: the records go with the process

    def _expire(self) -> None:
        now = self._clock()
        while self._jobs:
            oldest = next(iter(self._jobs.values()))
            if oldest.expires_at > now:
                break
            self._jobs.popitem(last=False)


class RedisJobStore:
    """Redis as the shared record, with this replica's own jobs mirrored in memory."""

    def __init__(self, store: RedisClient, *, ttl_s: float, local: MemoryJobStore) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.local = local

    async def add(self, job: Job) -> None:
        await self.local.add(job)  # bounds the jobs this replica runs
        try:
            await self.store.set(RECORD_PREFIX + job.job_id, job.to_json(), ttl_s=self.ttl_s)
        except RedisUnavailable as exc:
            await self.local.forget(job.job_id)
            retry = max(1.0, self.store.breaker.retry_in_s)
            raise Overloaded("the shared job store (Redis) is unavailable", retry_after_s=retry) from exc

    async def update(self, job: Job) -> None:
        await self.local.update(job)
        try:
            await self.store.set(RECORD_PREFIX + job.job_id, job.to_json(), ttl_s=self.ttl_s)
        except RedisUnavailable:
            logger.warning("job %s finished but Redis is unavailable: only this replica can report it", job.job_id)

    async def get(self, job_id: str) -> Job | None:
        mine = await self.local.get(job_id)
        if mine is not None:
            return mine
        try:
            raw = await self.store.get(RECORD_PREFIX + job_id)
        except RedisUnavailable as exc:
            # Not 404: the job may well exist; the client should ask again.
            raise StoreUnavailable("the shared job store (Redis) is unavailable", retry_after_s=1) from exc
        return Job.from_stored(raw, job_id)

    async def aclose(self) -> None:
        await self.store.aclose()


def build_job_store(settings: Settings, metrics: Metrics) -> JobStore:
    local = MemoryJobStore(max_jobs=settings.jobs.max_jobs)
    url = settings.jobs.redis_url or settings.cache.redis_url
    if not url:
        return local
    store = RedisClient(
        url,
        name="jobs",
        timeout_s=settings.cache.redis_timeout_s,
        on_error=lambda operation: metrics.job_store_errors.labels(operation).inc(),
    )
    return RedisJobStore(store, ttl_s=settings.jobs.ttl_s, local=local)
