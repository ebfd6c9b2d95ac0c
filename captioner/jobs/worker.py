"""The consumer loop: claims jobs from the queue, runs each through the same service path as a synchronous
request (a ``RunJob`` supplied by the HTTP layer: hash -> cache -> preprocess -> batcher), stores its one
result, sends its callback, and only then settles the delivery (acks it).

- At most ``capacity`` jobs run at once: enough to fill a batch while the previous one runs. The rest wait in
  the queue, where another replica's worker may take them.
- It claims only while ``available()`` says this replica can take model work (its model up and not failing,
  a variant's queue with room: ``VariantPool.work_refusal``). A replica whose model is down or respawning
  leaves the queue to the healthy ones instead of draining it into errors.
- While a job runs its lease is renewed every ``lease_s / 3``, so only a replica that stopped (crashed, hung,
  cut off) loses its jobs to another.
- A relayed sync request carries its caller's deadline (wall clock). Once it has passed, the job is answered
  504 ``timeout`` once, without running (nobody waits for it any more), and is never retried.
- Failures:
  - of the request itself (a bad image, a refused URL): the job's result at once;
  - of this worker (``ModelUnavailable``: its model down; ``ModelLost``: the batch died with its model process;
    ``Overloaded``: its own queue full; a ``RequestTimeout`` of a job with no caller deadline: its queue was too
    slow): the job is *released*, handed back to the queue at once without using an attempt, and this worker
    pauses claiming for the error's Retry-After. A job whose batches died with their model process
    ``max(2, max_attempts)`` times is the likely killer: it ends with ``model_error`` (a dead letter);
  - anything else transient (``ModelError``) on a queue that redelivers leaves the job to be tried again, by any
    replica, once its lease runs out; at the last attempt it becomes the result. A delivery numbered above
    ``max_attempts`` means the workers before it died running it (a poison job): it ends with ``model_error``
    without running again. Both count as dead letters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from captioner.errors import (
    CaptionerError,
    InternalError,
    ModelError,
    ModelLost,
    ModelUnavailable,
    Overloaded,
    RequestTimeout,
)
from captioner.jobs.queue import Claim, JobQueue, JobRequest
from captioner.jobs.records import JobStatus
from captioner.observability.metrics import Metrics
from captioner.outbound.callbacks import CallbackSender

logger = logging.getLogger("captioner.jobs")

# (request, deadline as a time.monotonic() instant) -> the synchronous 200 body.
RunJob = Callable[[JobRequest, float], Awaitable[dict[str, Any]]]
# Why this replica should claim nothing now (its model can't take work), or None when it may claim.
Availability = Callable[[], Overloaded | None]
RETRYABLE = (Overloaded, RequestTimeout, ModelError)
_CLAIM_BACKOFF_S = (0.1, 5.0)  # after a failed claim (Redis down): first and longest wait
_AVAILABLE_POLL_S = 0.2  # while claims are paused: how often the worker looks again (local state only)
_RELEASE_PAUSE_S = (0.2, 5.0)  # after a release: no claims for the error's Retry-After, within these bounds


def always_available() -> Overloaded | None:
    return None


def lost_limit(max_attempts: int) -> int:
    """Batches a job may lose with their model process before it counts as the killer (a dead letter)."""
    return max(2, max_attempts)


@dataclass(frozen=True)
class Release:
    """The job goes back to the queue unrun, its attempt not used."""

    reason: str  # model_unavailable | model_lost | overloaded | timeout (the metric's label)
    pause_s: float  # no claims by this worker for this long
    lost: bool = False


class JobWorker:
    def __init__(
        self,
        queue: JobQueue,
        run: RunJob,
        *,
        metrics: Metrics,
        capacity: int,
        request_timeout_s: float,
        lease_s: float,
        callbacks: CallbackSender | None = None,
        on_success: Callable[[float], None] = lambda seconds: None,
        available: Availability = always_available,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.run = run
        self.metrics = metrics
        self.capacity = capacity
        self.request_timeout_s = request_timeout_s
        self.lease_s = lease_s
        self.callbacks = callbacks
        self._on_success = on_success
        self._available = available
        self._clock = clock  # wall clock: a relayed job's deadline was set on another replica
        self._hold_until = 0.0  # time.monotonic(): no claims before (after a release)
        self._paused_for: str | None = None  # why claims are paused now, for the log's transitions
        self._running: dict[asyncio.Task[None], Claim] = {}
        self._slot_free = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def running(self) -> int:
        return len(self._running)

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._consume(), name="captioner-job-worker"))
        if self.queue.redelivers:
            self._tasks.append(asyncio.create_task(self._renew_leases(), name="captioner-job-leases"))

    def stop_claiming(self) -> None:
        """Draining: a queue that redelivers leaves its waiting jobs to other replicas; the memory queue's
        waiting jobs have nowhere else to go, so they are still run (``close`` bounds the wait)."""
        self._stopping = True

    async def close(self, timeout_s: float) -> None:
        """Stop claiming, let running jobs finish for up to ``timeout_s``, then cancel what is left."""
        self.stop_claiming()
        deadline = time.monotonic() + timeout_s
        consume = self._tasks[:1]
        if consume:
            await asyncio.wait(consume, timeout=max(0.0, deadline - time.monotonic()))
        if self._running:
            await asyncio.wait(set(self._running), timeout=max(0.0, deadline - time.monotonic()))
        leftover = [*self._tasks, *self._running]
        for task in leftover:
            task.cancel()
        if leftover:
            await asyncio.wait(leftover, timeout=1.0)

    async def _consume(self) -> None:
        await self._start_queue()
        backoff = _CLAIM_BACKOFF_S[0]
        while not (self._stopping and self.queue.redelivers):
            while len(self._running) >= self.capacity:
                self._slot_free.clear()
                await self._slot_free.wait()
            if not self._may_claim():
                await asyncio.sleep(_AVAILABLE_POLL_S)
                continue
            try:
                claims = await self.queue.claim(self.capacity - len(self._running), wait_s=0 if self._stopping else 1)
            except Exception as exc:
                logger.warning("claiming jobs failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _CLAIM_BACKOFF_S[1])
                continue
            backoff = _CLAIM_BACKOFF_S[0]
            if not claims and self._stopping:
                return
            for claim in claims:
                task = asyncio.create_task(self._process(claim), name=f"captioner-job-{claim.request.job_id}")
                self._running[task] = claim
                task.add_done_callback(self._done)

    def _may_claim(self) -> bool:
        """Whether to claim now: not while this replica's model can't take work, nor during a pause after a
        release. Logged on each change, with the reason; ``captioner_job_claims_paused`` follows it."""
        reason: str | None = None
        if time.monotonic() < self._hold_until:
            reason = "a job was just handed back"
        else:
            refusal = self._available()
            if refusal is not None:
                reason = refusal.message
        if reason != self._paused_for:
            if reason is None:
                logger.warning("job worker: claiming again")
            elif self._paused_for is None:
                logger.warning("job worker: not claiming jobs (%s)", reason)
            self._paused_for = reason
            self.metrics.job_claims_paused.set(0 if reason is None else 1)
        return reason is None

    async def _start_queue(self) -> None:
        backoff = _CLAIM_BACKOFF_S[0]
        while True:
            try:
                await self.queue.start()
                return
            except Exception as exc:
                logger.warning("the job queue is unreachable (%s: %s); retrying in %.1f s", type(exc).__name__, exc,
                               backoff)  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _CLAIM_BACKOFF_S[1])

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._slot_free.set()

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            claims = list(self._running.values())
            if not claims:
                continue
            try:
                await self.queue.renew(claims)
            except Exception as exc:  # the lease may lapse: another replica would then run the job too (harmless)
                logger.warning("renewing job leases failed (%s: %s)", type(exc).__name__, exc)

    async def _process(self, claim: Claim) -> None:
        request = claim.request
        self.metrics.jobs_running.inc()
        started = time.monotonic()
        try:
            if claim.attempt > 1:
                self.metrics.job_retries.inc()
            if claim.finished is not None:
                # An earlier delivery stored the result and stopped before settling: its callback may be missing.
                await self._callback(request, claim.finished.body())
                await self.queue.settle(claim)
                return
            outcome = await self._outcome(claim)
            if outcome is None:
                await self.queue.abandon(claim)
                return
            if isinstance(outcome, Release):
                self._hold_until = max(self._hold_until, time.monotonic() + outcome.pause_s)
                self.metrics.job_releases.labels(outcome.reason).inc()
                await self.queue.release(claim, lost=outcome.lost)
                return
            status, result = outcome
            if await self.queue.finish(claim, status, result):
                self.metrics.jobs.labels(status).inc()
                if status == "success":
                    self._on_success(time.monotonic() - started)
                await self._callback(request, {**result, "job_id": request.job_id})
            await self.queue.settle(claim)
        except asyncio.CancelledError:
            if not self.queue.redelivers:  # nobody else will ever run it: say so in its record
                error = Overloaded("the server shut down before this job finished").to_dict()
                try:
                    await self.queue.finish(claim, "error", error)
                    await self.queue.settle(claim)
                finally:
                    self.metrics.jobs.labels("error").inc()
            raise
        except Exception:
            # Storing the result failed (Redis down?): the delivery stays pending and is run again later.
            logger.exception("job %s: could not record its result; it will be tried again", request.job_id)
        finally:
            self.metrics.jobs_running.dec()

    async def _outcome(self, claim: Claim) -> tuple[JobStatus, dict[str, Any]] | Release | None:
        """The job's result; a ``Release`` to hand it back unrun; or None to leave it for another attempt."""
        request = claim.request
        if claim.lost_input:
            return "error", RequestTimeout("the job waited longer than jobs.ttl_s for a worker; its input is gone"
                                           ).to_dict()  # fmt: skip
        if request.expired(self._clock()):
            return self._expired(request)
        if claim.attempt > self.queue.max_attempts:
            self.metrics.job_dead_letters.inc()
            logger.error("job %s: delivered %d times without finishing; giving up", request.job_id, claim.attempt - 1)
            message = f"the job stopped {claim.attempt - 1} workers before finishing (jobs.max_attempts); not retried"
            return "error", ModelError(message).to_dict()
        deadline = time.monotonic() + self.request_timeout_s
        if request.deadline is not None:
            deadline = min(deadline, time.monotonic() + (request.deadline - self._clock()))
        try:
            return "success", await self.run(request, deadline)
        except (Overloaded, RequestTimeout) as error:
            if request.expired(self._clock()) or (isinstance(error, RequestTimeout) and request.deadline is not None):
                return self._expired(request)
            return self._release(claim, error)
        except RETRYABLE as error:
            if self.queue.redelivers and claim.attempt < self.queue.max_attempts:
                logger.warning("job %s: attempt %d failed (%s); it will be tried again", request.job_id,
                               claim.attempt, error.code)  # fmt: skip
                return None
            if self.queue.redelivers:
                self.metrics.job_dead_letters.inc()
            return "error", error.to_dict()
        except CaptionerError as error:
            return "error", error.to_dict()
        except Exception:
            logger.exception("async job %s failed", request.job_id)
            return "error", InternalError().to_dict()

    def _expired(self, request: JobRequest) -> tuple[JobStatus, dict[str, Any]]:
        """The caller's deadline passed: its one answer is 504, and no model time is spent on it."""
        self.metrics.job_expired.inc()
        logger.info("job %s: its caller's deadline passed; answered 504 without running it", request.job_id)
        return "error", RequestTimeout("the request deadline passed before a worker could caption the image"
                                       ).to_dict()  # fmt: skip

    def _release(self, claim: Claim, error: Overloaded | RequestTimeout) -> tuple[JobStatus, dict[str, Any]] | Release:
        """This worker could not run the job (its own outage): hand it back, unless it is the likely killer."""
        request = claim.request
        retry_s = error.retry_after_s if isinstance(error, Overloaded) else _RELEASE_PAUSE_S[0]
        pause_s = min(max(retry_s, _RELEASE_PAUSE_S[0]), _RELEASE_PAUSE_S[1])
        if isinstance(error, ModelLost):
            limit = lost_limit(self.queue.max_attempts)
            if claim.lost + 1 >= limit:
                self.metrics.job_dead_letters.inc()
                logger.error("job %s: %d of its batches died with their model process; giving up", request.job_id,
                             claim.lost + 1)  # fmt: skip
                message = f"the model process died {claim.lost + 1} times while captioning this image; not retried"
                return "error", ModelError(message).to_dict()
            reason = "model_lost"
        elif isinstance(error, RequestTimeout):
            reason = "timeout"
        else:
            reason = "model_unavailable" if isinstance(error, ModelUnavailable) else "overloaded"
        logger.warning("job %s: this replica could not run it (%s: %s); handed back to the queue", request.job_id,
                       reason, error.message)  # fmt: skip
        return Release(reason, pause_s, lost=isinstance(error, ModelLost))

    async def _callback(self, request: JobRequest, body: dict[str, Any]) -> None:
        if request.callback_url is None:
            return
        if self.callbacks is None:
            logger.warning("job %s has a callback_url but jobs.callback_secret is unset here", request.job_id)
            self.metrics.job_callbacks.labels("refused").inc()
            return
        outcome = await self.callbacks.deliver(request.callback_url, orjson.dumps(body), request.job_id)
        self.metrics.job_callbacks.labels(outcome).inc()
