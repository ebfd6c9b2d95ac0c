"""The job queue: what carries an accepted async job to a worker, and the job's record back to whoever asks.

``jobs.queue`` picks the implementation: ``memory`` (``MemoryJobQueue`` here: jobs live and run in the process
that accepted them) or ``redis`` (``jobs/durable_queue.py``: a Redis stream that every replica's worker
consumes, with leases, redelivery and a bounded number of attempts). Both speak ``JobQueue``:

- ``submit`` records a new job (or, for a repeated ``Idempotency-Key`` of the same owner, answers its job);
- ``claim`` hands a worker up to ``count`` jobs (``Claim``: the job, its attempt number, an earlier result);
- ``finish`` stores a job's one result (False if an earlier delivery already did), ``settle`` ends a delivery,
  ``abandon`` leaves a delivery to be redelivered (queues that ``redeliver`` only), ``renew`` keeps leases;
- ``release`` hands a job back at once *without using an attempt*: the worker could not run it for reasons of
  its own (its model down or lost, its queue full), so the job did nothing to deserve a strike.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from captioner.errors import InvalidRequest, Overloaded
from captioner.jobs.records import Job, JobStatus, JobStore
from captioner.serving.hashing import sha256_off_loop


@dataclass(frozen=True)
class JobRequest:
    """Everything a worker needs to run a job; exactly one of ``image`` and ``url`` is set."""

    job_id: str
    owner: str | None  # the API key's principal when auth is on
    num_captions: int
    image: bytes | None = field(default=None, repr=False)
    url: str | None = None
    callback_url: str | None = None
    assignment_key: str | None = None  # X-Assignment-Key: the A/B variant sticks to it rather than to the image
    # Wall-clock seconds (time.time()): replicas share no monotonic clock. A relayed sync request's deadline:
    # past it the caller has its 504 already, so no worker runs the job. None for an async job.
    deadline: float | None = None
    tenant: str | None = None  # the owner's tenant (guard/tenants.py): whose usage and cache privacy it is

    @classmethod
    def new(
        cls,
        owner: str | None,
        num_captions: int,
        *,
        image: bytes | None,
        url: str | None,
        callback_url: str | None = None,
        assignment_key: str | None = None,
        deadline: float | None = None,
        tenant: str | None = None,
    ) -> JobRequest:
        """A request for a new job, under a fresh random id."""
        return cls(
            secrets.token_hex(16), owner, num_captions, image=image, url=url, callback_url=callback_url,
            assignment_key=assignment_key, deadline=deadline, tenant=tenant,
        )  # fmt: skip

    def expired(self, now: float) -> bool:
        """Whether the caller's deadline passed at ``now`` (wall-clock seconds)."""
        return self.deadline is not None and now >= self.deadline

    async def fingerprint(self) -> str:
        """What makes two requests the same request (for Idempotency-Key reuse with a different body)."""
        source = self.image if self.image is not None else (self.url or "").encode()
        digest = await sha256_off_loop(source)
        extra = f"{self.num_captions}\0{self.callback_url or ''}\0{'url' if self.image is None else 'image'}"
        return hashlib.sha256(f"{digest}\0{extra}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Claim:
    """One delivery of a job to this worker."""

    request: JobRequest
    attempt: int = 1  # 1 on the first delivery
    token: str = ""  # the queue's handle for this delivery (a stream entry id)
    finished: Job | None = None  # an earlier delivery stored the result, then stopped before settling
    lost_input: bool = False  # the image expired (jobs.ttl_s) before any worker could run the job
    lost: int = 0  # earlier deliveries whose batch was lost with its model process (released, no attempt used)


@dataclass(frozen=True)
class Submitted:
    job: Job
    replayed: bool  # an earlier request with the same Idempotency-Key and owner created this job


@dataclass(frozen=True)
class QueueStats:
    length: int  # jobs waiting or running
    pending: int  # delivered to a worker, not yet ended
    oldest_pending_s: float


class JobQueue(Protocol):
    redelivers: bool  # a delivery that stops unfinished is given to a worker again (up to max_attempts)
    max_attempts: int

    async def start(self) -> None: ...

    async def submit(self, request: JobRequest, *, idempotency_key: str | None) -> Submitted:
        """Raises ``Overloaded`` when the queue is full or unreachable, ``InvalidRequest`` for a key reused with a
        different request."""

    async def get(self, job_id: str) -> Job | None: ...

    async def claim(self, count: int, *, wait_s: float) -> list[Claim]:
        """Up to ``count`` jobs for this worker, waiting up to ``wait_s`` for one to arrive."""

    async def renew(self, claims: Sequence[Claim]) -> None: ...

    async def finish(self, claim: Claim, status: JobStatus, result: dict[str, Any]) -> bool: ...

    async def settle(self, claim: Claim) -> None: ...

    async def abandon(self, claim: Claim) -> None: ...

    async def release(self, claim: Claim, *, lost: bool) -> None:
        """Hand the job back to the queue now, its attempt not used (``lost``: its batch died with its model
        process, counted apart so that a job that kills every process it reaches still ends)."""

    async def stats(self) -> QueueStats: ...

    async def aclose(self) -> None: ...


def reused_key(key: str) -> InvalidRequest:
    return InvalidRequest(f"the Idempotency-Key {key!r} was already used for a different request")


class MemoryJobQueue:
    """Jobs in this process: records in a ``JobStore``, the waiting ones in a deque. A crash loses them."""

    redelivers = False
    max_attempts = 1

    def __init__(self, store: JobStore, *, ttl_s: float, max_keys: int, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._clock = clock
        self._waiting: deque[JobRequest] = deque()
        self._arrived = asyncio.Event()
        self._running = 0
        self._lost: dict[str, int] = {}  # job id -> batches it was in that died with the model process
        # (owner, Idempotency-Key) -> (job id, fingerprint, expires at), oldest first.
        self._keys: OrderedDict[tuple[str, str], tuple[str, str, float]] = OrderedDict()

    async def start(self) -> None:
        pass  # nothing to connect to

    async def submit(self, request: JobRequest, *, idempotency_key: str | None) -> Submitted:
        slot = (request.owner or "", idempotency_key) if idempotency_key else None
        fingerprint = await request.fingerprint() if slot else ""
        now = self._clock()
        if slot is not None and slot in self._keys:
            job_id, known, expires_at = self._keys[slot]
            job = await self.store.get(job_id) if expires_at > now else None
            if job is not None:
                if known != fingerprint:
                    raise reused_key(slot[1])
                return Submitted(job, replayed=True)
        job = Job(request.job_id, "processing", None, request.owner, now + self.ttl_s)
        await self.store.add(job)  # Overloaded when every kept job is still running
        if slot is not None:
            self._keys[slot] = (job.job_id, fingerprint, now + self.ttl_s)
            self._keys.move_to_end(slot)
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        self._waiting.append(request)
        self._arrived.set()
        return Submitted(job, replayed=False)

    async def get(self, job_id: str) -> Job | None:
        return await self.store.get(job_id)

    async def claim(self, count: int, *, wait_s: float) -> list[Claim]:
        if not self._waiting:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait_s)
        claims: list[Claim] = []
        while self._waiting and len(claims) < count:
            request = self._waiting.popleft()
            claims.append(Claim(request, lost=self._lost.pop(request.job_id, 0)))
        self._running += len(claims)
        return claims

    async def renew(self, claims: Sequence[Claim]) -> None:
        pass  # no leases: the process that runs a job is the one that holds it

    async def finish(self, claim: Claim, status: JobStatus, result: dict[str, Any]) -> bool:
        request = claim.request
        await self.store.update(Job(request.job_id, status, result, request.owner, self._clock() + self.ttl_s))
        return True

    async def settle(self, claim: Claim) -> None:
        self._running -= 1

    async def abandon(self, claim: Claim) -> None:
        raise AssertionError("the memory queue does not redeliver: finish the job instead")

    async def release(self, claim: Claim, *, lost: bool) -> None:
        """Back to the front of the line: this process is the only one that can run it, once it can."""
        self._running -= 1
        request = claim.request
        if claim.lost or lost:
            self._lost[request.job_id] = claim.lost + (1 if lost else 0)
        self._waiting.appendleft(request)
        self._arrived.set()

    async def stats(self) -> QueueStats:
        return QueueStats(len(self._waiting) + self._running, self._running, 0.0)

    async def aclose(self) -> None:
        """Jobs still waiting get an error result (their process is going), then the store closes."""
        while self._waiting:
            request = self._waiting.popleft()
            error = Overloaded("the server shut down before this job could start").to_dict()
            with contextlib.suppress(Exception):  # the store logs its own failures
                await self.store.update(Job(request.job_id, "error", error, request.owner, self._clock() + self.ttl_s))
        await self.store.aclose()
