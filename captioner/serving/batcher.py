"""The asyncio dynamic batcher.

Requests are queued one future each (as in Ray Serve's ``_BatchQueue``). A single scheduler task decides,
through the pure function ``should_flush``, when the queued requests become one batch, and hands that batch
to ``run_batch``, an async callable that runs the model on its own thread.

Scheduling rules:
- A batch is flushed once it holds ``max_batch_size`` requests, or ``max_wait_s`` after its *first* request
  arrived, whichever comes first.
- One batch runs at a time, since there is one model. While it runs, the next batch keeps filling; if
  its deadline passes meanwhile, it is flushed the moment the model is free (and may have grown meanwhile,
  which only helps throughput). A batch that is already full can't grow: it goes at once to wait at the
  model's door (at most one does), so the model starts it the moment the running one ends instead of after
  a round trip through the event loop.
- Requests whose own deadline passed, or whose caller went away (future cancelled), are dropped before
  inference, so no model time is spent on them.
- The queue is bounded: ``submit`` raises ``Overloaded`` when ``max_queue`` requests are waiting.
- If ``run_batch`` raises, or returns the wrong number of results, every request of that batch fails with
  ``ModelError`` and the scheduler goes on with the next batch.

Time comes from an injectable ``Clock`` so that tests drive the scheduler with a fake clock, never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from captioner.errors import CaptionerError, ModelError, Overloaded, RequestTimeout

logger = logging.getLogger("captioner.batcher")

T = TypeVar("T")
R = TypeVar("R")


class Clock(Protocol):
    """Monotonic time plus a way to wait for an event with a timeout measured on that same clock."""

    def now(self) -> float: ...

    async def wait_for_event(self, event: asyncio.Event, timeout: float) -> None:
        """Return when ``event`` is set or ``timeout`` seconds (of this clock) have passed."""


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def wait_for_event(self, event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


def should_flush(*, queued: int, first_arrival: float, now: float, max_batch_size: int, max_wait_s: float) -> bool:
    """Whether the requests waiting now should become a batch (assuming the model is free)."""
    if queued == 0:
        return False
    return queued >= max_batch_size or now - first_arrival >= max_wait_s


def submission_refusal(
    *, closing: bool, queued: int, max_queue: int, retry_after_s: Callable[[], float]
) -> Overloaded | None:
    """Why a batcher (static or continuous) refuses one more request now: draining, or its queue is full."""
    if closing:
        return Overloaded("the server is shutting down", retry_after_s=1)
    if queued >= max_queue:
        return Overloaded(retry_after_s=retry_after_s())
    return None


async def await_submitted(future: asyncio.Future[R], wakeup: asyncio.Event) -> R:
    """Wait for a submitted request. Cancelling the caller cancels the request, and ``wakeup`` makes the scheduler
    drop it now (from the queue, or the running set) rather than at the next arrival."""
    try:
        return await future
    finally:
        if not future.done():
            future.cancel()
        if future.cancelled():  # (cancelling the caller cancels the future it awaits, too)
            wakeup.set()


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    arrived: float
    deadline: float


@dataclass(frozen=True)
class BatchInfo:
    """What one flushed batch looked like, for metrics and logs."""

    size: int
    waited_s: float  # how long its first request waited before the batch was flushed


BatchObserver = Callable[[BatchInfo], None]


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    expired: int = 0  # dropped before inference: deadline passed
    cancelled: int = 0  # dropped before inference: caller went away


class Batcher(Generic[T, R]):
    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        request_timeout_s: float = 30.0,
        clock: Clock | None = None,
        on_batch: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be >= 1")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        self._clock: Clock = clock or MonotonicClock()
        self._on_batch = on_batch
        self._queue: deque[_Pending[T, R]] = deque()
        self._wakeup = asyncio.Event()
        self._in_flight = 0  # batches handed to run_batch, not yet finished: the running one, one full behind it
        self._closing = False
        self._expedite = False  # draining: dispatch what is queued without waiting for the batch deadline
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()  # (the loop keeps only weak references to tasks)
        self.stats = BatcherStats()

    # -- public API ------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._schedule(), name="captioner-batcher")

    def submit(self, item: T, *, timeout_s: float | None = None) -> asyncio.Future[R]:
        """Queue one request; the returned future resolves to its result (or its error)."""
        refusal = submission_refusal(
            closing=self._closing, queued=len(self._queue), max_queue=self.max_queue, retry_after_s=self.retry_after_s
        )
        if refusal is not None:
            raise refusal
        now = self._clock.now()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        timeout = self.request_timeout_s if timeout_s is None else timeout_s
        self._queue.append(_Pending(item, future, now, now + timeout))
        self._wakeup.set()
        return future

    async def __call__(self, item: T, *, timeout_s: float | None = None) -> R:
        """Submit and wait. Cancelling the caller cancels the request, which then never reaches the model."""
        return await await_submitted(self.submit(item, timeout_s=timeout_s), self._wakeup)

    def retry_after_s(self) -> float:
        """A fair guess at when a full queue will have room: the batches ahead, at the wait deadline each."""
        batches_ahead = len(self._queue) / self.max_batch_size
        return max(1.0, batches_ahead * max(self.max_wait_s, 0.1))

    def expedite(self) -> None:
        """From now on, dispatch queued requests as soon as the model is free (the server is draining: nothing
        new will join the batch, so waiting for the deadline would only delay the answers). New requests are
        still accepted; ``drain`` is what refuses them."""
        self._expedite = True
        self._wakeup.set()

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Refuse new requests, finish every queued and running one; True if all finished in time."""
        self._closing = True
        self._wakeup.set()
        task = self._task
        if task is None:
            self._fail_all_queued(Overloaded("the server is shutting down"))
            return True
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._fail_all_queued(Overloaded("the server is shutting down"))
            return False
        return True

    # -- scheduler -------------------------------------------------------------------------------

    async def _schedule(self) -> None:
        try:
            while not await self._step_guarded():
                pass
        except asyncio.CancelledError:
            raise
        except BaseException:  # pragma: no cover - KeyboardInterrupt and such: callers must not hang anyway
            logger.exception("batcher scheduler stopped")
            self._fail_all_queued(ModelError())
            raise

    async def _step_guarded(self) -> bool:
        try:
            return await self._step()
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug in scheduling must neither leave the queued callers hanging nor stop the scheduler: the
            # requests of later batches would then queue forever.
            logger.exception("batcher scheduling step failed; failing the queued requests")
            self._fail_all_queued(ModelError())
            return False

    async def _step(self) -> bool:
        """Make one scheduling decision, or wait for a reason to; True once closed and idle."""
        self._wakeup.clear()
        self._drop_dead()
        if not self._queue:
            if self._closing and not self._in_flight:
                return True
            await self._wakeup.wait()
            return False
        if self._in_flight and not (self._in_flight == 1 and len(self._queue) >= self.max_batch_size):
            await self._wakeup.wait()  # set when the running batch ends or a request arrives
            return False
        now = self._clock.now()
        first = self._queue[0].arrived
        flush = (
            self._closing
            or self._expedite
            or should_flush(
                queued=len(self._queue),
                first_arrival=first,
                now=now,
                max_batch_size=self.max_batch_size,
                max_wait_s=self.max_wait_s,
            )
        )
        if flush:
            self._dispatch(now)
        else:
            await self._clock.wait_for_event(self._wakeup, first + self.max_wait_s - now)
        return False

    def _drop_dead(self) -> None:
        """Remove requests nobody waits for any more, or whose deadline passed, before inference."""
        if not self._queue:
            return
        now = self._clock.now()
        expired = cancelled = 0
        kept: deque[_Pending[T, R]] = deque()
        for pending in self._queue:
            if pending.future.done():
                cancelled += 1
            elif now >= pending.deadline:
                expired += 1
                pending.future.set_exception(RequestTimeout())
            else:
                kept.append(pending)
        if expired or cancelled:
            self._queue = kept
            self.stats.expired += expired
            self.stats.cancelled += cancelled

    def _dispatch(self, now: float) -> None:
        size = min(self.max_batch_size, len(self._queue))
        batch = [self._queue.popleft() for _ in range(size)]
        info = BatchInfo(size=len(batch), waited_s=max(0.0, now - batch[0].arrived))
        self.stats.batches += 1
        self.stats.items += len(batch)
        if self._on_batch is not None:
            try:
                self._on_batch(info)
            except Exception:  # pragma: no cover - observers are best effort
                logger.exception("batch observer failed")
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(batch), name="captioner-batch")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        try:
            results = await self._run_batch([p.item for p in batch])
            if len(results) != len(batch):
                raise ModelError(f"the model returned {len(results)} results for a batch of {len(batch)}")
        except BaseException as exc:  # every failure must reach every caller
            if isinstance(exc, CaptionerError):
                error: BaseException = exc
            else:
                error = ModelError()
                error.__cause__ = exc
            logger.error("batch of %d failed: %r", len(batch), exc, exc_info=exc)
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
        finally:
            self._in_flight -= 1
            self._wakeup.set()

    def _fail_all_queued(self, error: CaptionerError) -> None:
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(error)
