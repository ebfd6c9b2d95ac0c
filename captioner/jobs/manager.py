"""``JobManager``: the one place async jobs are accepted (``submit``), looked up (``get``, ``wait``) and, on a
replica with a model, run (``start_worker``). Admission rules for jobs (per-caller caps, budgets) belong in
``submit``. It also publishes the queue's gauges (length, pending, oldest pending age) every few seconds, from
whichever replica scrapes: with ``jobs.queue: redis`` they describe the shared queue, the same on every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

from captioner.config import Settings
from captioner.errors import NotFound, RequestTimeout
from captioner.jobs.durable_queue import DurableJobQueue
from captioner.jobs.queue import JobQueue, JobRequest, MemoryJobQueue, Submitted
from captioner.jobs.records import JOB_ID, Job, StoreUnavailable, build_job_store
from captioner.jobs.worker import Availability, JobWorker, RunJob, always_available
from captioner.observability.metrics import Metrics
from captioner.outbound.callbacks import CallbackSender
from captioner.shared_state.job_stream import RedisJobStream
from captioner.shared_state.redis_client import RedisClient

logger = logging.getLogger("captioner.jobs")

STATS_EVERY_S = 2.0
_BLOCK_S = 1.0  # a worker's blocking read waits this long for a new job before looking for abandoned ones
_WAIT_POLL_S = (0.01, 0.25)  # wait(): the first and the longest pause between two looks at the record
# wait(): how long the job store may stay unreachable before the waiting request gets 503. A Redis restart or a
# failover takes a second or few, and the circuit breaker's probes come 0.5, 1, 2, 4 s apart: 10 s rides that out.
WAIT_OUTAGE_S = 10.0


def build_job_queue(settings: Settings, metrics: Metrics) -> JobQueue:
    jobs = settings.jobs
    if jobs.queue == "memory":
        return MemoryJobQueue(build_job_store(settings, metrics), ttl_s=jobs.ttl_s, max_keys=jobs.max_jobs)
    url = jobs.redis_url or settings.cache.redis_url

    def count_error(operation: str) -> None:
        metrics.job_store_errors.labels(operation).inc()

    client = RedisClient(url, name="jobs", timeout_s=jobs.redis_timeout_s, on_error=count_error)
    blocking = RedisClient(url, name="jobs-consumer", timeout_s=jobs.redis_timeout_s + _BLOCK_S, on_error=count_error)
    consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"  # unique per process start
    stream = RedisJobStream(
        client, blocking, consumer=consumer, max_length=jobs.max_jobs, ttl_s=jobs.ttl_s, lease_s=jobs.lease_s,
        block_s=_BLOCK_S,
    )  # fmt: skip
    return DurableJobQueue(stream, ttl_s=jobs.ttl_s, lease_s=jobs.lease_s, max_attempts=jobs.max_attempts)


class JobManager:
    def __init__(
        self,
        queue: JobQueue,
        *,
        ttl_s: float,
        metrics: Metrics,
        batch_size: int = 1,
        clock: Callable[[], float] = time.monotonic,
        outage_s: float = WAIT_OUTAGE_S,
    ) -> None:
        self.queue = queue
        self.ttl_s = ttl_s
        self.metrics = metrics
        self.batch_size = batch_size
        self.worker: JobWorker | None = None
        self._clock = clock
        self.outage_s = outage_s
        self._stats_task: asyncio.Task[None] | None = None
        self._backlog = 0  # jobs waiting or running, as of the last look at the queue
        # Moving average of how long a job takes, for estimated_time_seconds. A first guess until jobs finish.
        self._typical_s = 1.0

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> JobManager:
        queue = build_job_queue(settings, metrics)
        return cls(queue, ttl_s=settings.jobs.ttl_s, metrics=metrics, batch_size=settings.batching.max_batch_size)

    def estimate_s(self) -> float:
        """Seconds a job submitted now should take: the typical job, once per batch queued ahead of it."""
        return round(self._typical_s * (1.0 + self._backlog / self.batch_size), 2)

    async def submit(self, request: JobRequest, *, idempotency_key: str | None = None) -> Submitted:
        """Accept a job (the one place jobs are accepted): ``Overloaded`` when the queue can't take it."""
        submitted = await self.queue.submit(request, idempotency_key=idempotency_key)
        if not submitted.replayed:
            self._backlog += 1
        return submitted

    async def get(self, job_id: str, *, principal: str | None) -> Job:
        job = await self.queue.get(job_id) if JOB_ID.fullmatch(job_id) else None
        # Someone else's job reads as unknown, so ids can't be probed across keys.
        if job is None or (job.owner is not None and job.owner != principal):
            raise NotFound(f"no job {job_id!r} (unknown, or expired after {self.ttl_s:g} s)")
        return job

    async def wait(self, job_id: str, *, principal: str | None, deadline: float) -> Job:
        """The job once it has ended; ``RequestTimeout`` at ``deadline`` (a ``time.monotonic()`` instant).

        A job store that can't answer for a moment (a Redis restart, a failover, the breaker's backoff) is waited
        out: the job is still running somewhere, and a 503 now would have the client submit it again. Only an
        outage of ``outage_s`` gives up with ``StoreUnavailable`` (503 + Retry-After)."""
        pause = _WAIT_POLL_S[0]
        unreachable_since: float | None = None
        while True:
            try:
                job = await self.get(job_id, principal=principal)
            except StoreUnavailable:
                now = self._clock()
                unreachable_since = now if unreachable_since is None else unreachable_since
                if now - unreachable_since >= self.outage_s:
                    raise
                if now >= deadline:
                    raise RequestTimeout("the job store was unreachable at the request deadline") from None
                logger.debug("job %s: the job store is unreachable; still waiting", job_id)
                await asyncio.sleep(min(pause, deadline - now))
                pause = min(pause * 1.5, _WAIT_POLL_S[1])
                continue
            unreachable_since = None
            if job.status != "processing":
                return job
            left = deadline - self._clock()
            if left <= 0:
                raise RequestTimeout("no worker finished the job before the request deadline; it is still queued")
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 1.5, _WAIT_POLL_S[1])

    def start(self) -> None:
        """Publish the queue's gauges from now on (needs the running loop)."""
        self._stats_task = asyncio.create_task(self._publish_stats(), name="captioner-job-stats")

    def start_worker(
        self,
        run: RunJob,
        *,
        capacity: int,
        request_timeout_s: float,
        lease_s: float,
        callbacks: CallbackSender | None,
        available: Availability = always_available,
    ) -> JobWorker:
        self.worker = JobWorker(
            self.queue, run, metrics=self.metrics, capacity=capacity, request_timeout_s=request_timeout_s,
            lease_s=lease_s, callbacks=callbacks, on_success=self._observe, available=available,
        )  # fmt: skip
        self.worker.start()
        return self.worker

    def stop_claiming(self) -> None:
        if self.worker is not None:
            self.worker.stop_claiming()

    async def close(self, timeout_s: float) -> None:
        """Let running jobs finish (up to ``timeout_s``) and record their results, then close the queue."""
        if self.worker is not None:
            await self.worker.close(timeout_s)
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
        await self.queue.aclose()

    def _observe(self, seconds: float) -> None:
        self._typical_s = 0.8 * self._typical_s + 0.2 * seconds

    async def _publish_stats(self) -> None:
        metrics = self.metrics
        while True:
            try:
                stats = await self.queue.stats()
            except Exception as exc:  # Redis down: the gauges keep their last values; the error is counted
                logger.debug("job queue stats unavailable: %s", exc)
            else:
                self._backlog = stats.length
                metrics.job_queue_length.set(stats.length)
                metrics.job_queue_pending.set(stats.pending)
                metrics.job_queue_oldest_pending_seconds.set(stats.oldest_pending_s)
            await asyncio.sleep(STATS_EVERY_S)
