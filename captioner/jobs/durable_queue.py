"""``jobs.queue: redis``: the durable job queue, a ``JobQueue`` over a Redis stream (``shared_state/redis_job_queue``).

What survives what:
- a replica dying mid-job: its deliveries stop being heartbeated, and after ``jobs.lease_s`` another replica's
  worker claims them (the attempt number grows with each delivery); after ``jobs.max_attempts`` deliveries the
  job ends with an error result instead of running again (a poison image can't take every worker down);
- a worker that can't run a job it claimed (its model down, lost mid-batch, or its queue full): it releases the
  job, which goes back to the stream's end as a new entry at once, carrying the attempts used so far (this one
  not counted) and how many of its batches died with their model process;
- two deliveries of one job racing (a worker that was only slow): the first result stored is the job's only
  result, the other is dropped;
- the image: stored next to the job with a TTL of ``jobs.ttl_s`` and deleted when the job ends;
- an enqueue whose answer was lost (a timeout after the script ran): tried again, idempotently on the job id, so
  the job is made once and its submitter gets it (not a 503 for a job that exists);
- a full stream (``jobs.max_jobs`` jobs waiting or running) or an unreachable Redis: 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from captioner.errors import Overloaded
from captioner.jobs.queue import Claim, JobRequest, QueueStats, Submitted, reused_key
from captioner.jobs.records import Job, JobStatus, StoreUnavailable
from captioner.shared_state.job_stream import Enqueued, RedisJobStream, StreamEntry
from captioner.shared_state.redis_client import RedisUnavailable

logger = logging.getLogger("captioner.jobs")

# Seconds a client should wait before trying again when the queue is full: about a batch's worth of work.
_FULL_RETRY_AFTER_S = 5.0
# An enqueue that failed (a timeout may come after the script ran) is tried again, being idempotent on the job
# id, this many times in all, waiting for the breaker's probe when it opened, if that comes within the budget.
_ENQUEUE_TRIES = 3
_ENQUEUE_RETRY_BUDGET_S = 2.0
# Consumers of replicas gone (holding nothing) for a day are removed, checked every ten minutes by each worker.
_FORGET_IDLE_S = 86400.0
_FORGET_EVERY_S = 600.0


def encode_request(request: JobRequest, *, spent: int = 0, lost: int = 0) -> bytes:
    """The stream entry's payload: everything but the image, which has its own key (and TTL). ``spent``: attempts
    used by deliveries before this entry (a released job's entry is a new one, its delivery count starts again);
    ``lost``: batches it was in that died with their model process."""
    return orjson.dumps({
        "owner": request.owner, "num_captions": request.num_captions, "url": request.url,
        "callback_url": request.callback_url, "image": request.image is not None,
        "assignment_key": request.assignment_key, "deadline": request.deadline, "tenant": request.tenant,
        "spent": spent, "lost": lost,
    })  # fmt: skip


@dataclass(frozen=True)
class Decoded:
    request: JobRequest
    lost_input: bool  # the image expired, or a payload we can't read
    spent: int = 0
    lost: int = 0


def decode_request(job_id: str, payload: bytes, image: bytes | None) -> Decoded:
    """The request and its history, from an entry's payload (fields added since v1 began are optional)."""
    try:
        data = orjson.loads(payload)
        deadline = data.get("deadline")
        request = JobRequest(
            job_id, data["owner"], int(data["num_captions"]), image=image if data["image"] else None,
            url=data["url"], callback_url=data["callback_url"],
            assignment_key=data.get("assignment_key"),  # absent from entries written before it existed
            deadline=None if deadline is None else float(deadline), tenant=data.get("tenant"),
        )  # fmt: skip
        spent, lost = int(data.get("spent", 0)), int(data.get("lost", 0))
    except (ValueError, KeyError, TypeError, AttributeError):
        logger.warning("job %s has an unreadable payload in the stream", job_id)
        return Decoded(JobRequest(job_id, None, 1), lost_input=True)
    return Decoded(request, request.image is None and request.url is None, spent, lost)


class DurableJobQueue:
    redelivers = True

    def __init__(
        self,
        stream: RedisJobStream,
        *,
        ttl_s: float,
        lease_s: float,
        max_attempts: int,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.ttl_s = ttl_s
        self.max_attempts = max_attempts
        self._clock = clock
        self._monotonic = monotonic
        # Look for abandoned deliveries a few times per lease: a dead replica's jobs move on within ~1.25 leases.
        self._reclaim_every_s = max(0.1, lease_s / 4)
        self._next_reclaim = 0.0
        self._next_forget = 0.0

    async def start(self) -> None:
        await self.stream.ensure_group()

    async def submit(self, request: JobRequest, *, idempotency_key: str | None) -> Submitted:
        key, fingerprint = None, ""
        if idempotency_key:
            # Keys are per owner: another API key using the same Idempotency-Key gets its own job.
            key = hashlib.sha256(f"{request.owner or ''}\0{idempotency_key}".encode()).hexdigest()
            fingerprint = await request.fingerprint()
        job = Job(request.job_id, "processing", None, request.owner, self._clock() + self.ttl_s)
        enqueued = await self._enqueue(request, job, key, fingerprint)
        if enqueued is None:
            raise Overloaded(
                f"the job queue is full ({self.stream.max_length} jobs waiting or running)",
                retry_after_s=_FULL_RETRY_AFTER_S,
            )
        if enqueued.created:
            return Submitted(job, replayed=False)
        if idempotency_key and enqueued.fingerprint != fingerprint:
            raise reused_key(idempotency_key)
        existing = await self.get(enqueued.job_id)
        if existing is None:  # the key outlived its job's record by a moment: report the job as just ended
            existing = Job(enqueued.job_id, "processing", None, request.owner, self._clock() + self.ttl_s)
        return Submitted(existing, replayed=True)

    async def _enqueue(self, request: JobRequest, job: Job, key: str | None, fingerprint: str) -> Enqueued | None:
        """The enqueue script, tried again after a failure: a timeout may come after the script ran (the job
        exists, its answer was lost), and answering 503 then would have the client submit the job twice. The
        script is idempotent on the job id, so a second try finds the first one's job. Still failing: 503 (with
        an Idempotency-Key, the client's retry finds the job if one was made)."""
        budget_ends = self._monotonic() + _ENQUEUE_RETRY_BUDGET_S
        for attempt in range(1, _ENQUEUE_TRIES + 1):
            try:
                return await self.stream.enqueue(
                    request.job_id, payload=encode_request(request), record=job.to_json(), image=request.image,
                    key=key, fingerprint=fingerprint,
                )  # fmt: skip
            except RedisUnavailable as exc:
                pause = max(0.05, self.stream.client.breaker.retry_in_s)
                if attempt == _ENQUEUE_TRIES or self._monotonic() + pause > budget_ends:
                    retry = max(1.0, self.stream.client.breaker.retry_in_s)
                    raise Overloaded("the job queue (Redis) is unavailable", retry_after_s=retry) from exc
                logger.warning("job %s: enqueue failed (%s); trying again in %.2f s", request.job_id, exc, pause)
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, job_id: str) -> Job | None:
        try:
            raw = await self.stream.record(job_id)
        except RedisUnavailable as exc:
            # Not 404: the job may well exist; the client should ask again.
            raise StoreUnavailable("the job queue (Redis) is unavailable", retry_after_s=1) from exc
        return Job.from_stored(raw, job_id)

    async def claim(self, count: int, *, wait_s: float = 1.0) -> list[Claim]:
        """Abandoned deliveries first (now and then), then new jobs (blocking up to the stream's block_s)."""
        entries: list[StreamEntry] = []
        if self._monotonic() >= self._next_forget:
            self._next_forget = self._monotonic() + _FORGET_EVERY_S
            await self.stream.forget_idle_consumers(_FORGET_IDLE_S)
        if self._monotonic() >= self._next_reclaim:
            self._next_reclaim = self._monotonic() + self._reclaim_every_s
            entries += await self.stream.reclaim(count)
        if len(entries) < count:
            entries += await self.stream.read_new(count - len(entries), block=wait_s > 0 and not entries)
        return [self._claim(entry) for entry in entries]

    def _claim(self, entry: StreamEntry) -> Claim:
        decoded = decode_request(entry.job_id, entry.payload, entry.image)
        request, lost = decoded.request, decoded.lost_input
        finished = None
        if entry.record is None:
            lost = True  # the record expired: the job outlived jobs.ttl_s waiting
        else:
            try:
                job = Job.from_json(entry.record)
                finished = job if job.status != "processing" else None
            except (ValueError, KeyError, TypeError):
                lost = True
        return Claim(request, decoded.spent + entry.deliveries, entry.entry_id, finished=finished, lost_input=lost,
                     lost=decoded.lost)  # fmt: skip

    async def renew(self, claims: Sequence[Claim]) -> None:
        owned = await self.stream.heartbeat([claim.token for claim in claims])
        if owned < len(claims):
            logger.warning("%d job deliveries were taken over by another replica (lease lost)", len(claims) - owned)

    async def finish(self, claim: Claim, status: JobStatus, result: dict[str, Any]) -> bool:
        request = claim.request
        record = Job(request.job_id, status, result, request.owner, self._clock() + self.ttl_s).to_json()
        return await self.stream.finish(request.job_id, record) == 1

    async def settle(self, claim: Claim) -> None:
        await self.stream.ack(claim.token)

    async def abandon(self, claim: Claim) -> None:
        pass  # left pending: once its lease runs out, the next claim (any replica's) takes it as a new attempt

    async def release(self, claim: Claim, *, lost: bool) -> None:
        """Re-add the job as a new entry (at the stream's end, where every worker's blocking read sees it at
        once) that carries the attempts used so far, this one excluded; the old entry goes, in one script."""
        payload = encode_request(claim.request, spent=claim.attempt - 1, lost=claim.lost + (1 if lost else 0))
        if not await self.stream.release(claim.token, claim.request.job_id, payload):
            logger.warning("job %s: could not hand it back, another replica holds it now (lease lost)",
                           claim.request.job_id)  # fmt: skip

    async def stats(self) -> QueueStats:
        stats = await self.stream.stats()
        return QueueStats(stats.length, stats.pending, stats.oldest_pending_s)

    async def aclose(self) -> None:
        await self.stream.aclose()
