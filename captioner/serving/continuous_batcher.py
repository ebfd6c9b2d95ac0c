"""``batching.mode: continuous``: requests join the model's running set of decoding sequences as soon as it has
rows for them, and are answered the moment their own captions end (the model side: model/decode_engine.py).

The queue in front is the static batcher's (bounded by ``max_queue``, ``Overloaded`` beyond; a request whose
deadline passes, or whose caller went away, is dropped before it reaches the model). What differs:
- no batch deadline: a request is handed to the model at once when its rows fit the bound
  (decode_admission.py), else when rows free up;
- a request in the running set whose deadline passes fails with ``RequestTimeout``, and one whose caller is
  gone is dropped; both leave the model's running set and free their rows;
- ``drain`` refuses new requests and waits for the queued and live ones to finish.
A single scheduler task makes every decision on the event loop; the model side's answers arrive from its thread
through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from captioner.errors import CaptionerError, ModelError, Overloaded, RequestTimeout
from captioner.model.protocol import Caption, CaptionJob, DecodeProgress, DecodeSink, StepDecoding
from captioner.serving.batcher import BatcherStats, Clock, MonotonicClock, await_submitted, submission_refusal
from captioner.serving.decode_admission import admissible

logger = logging.getLogger("captioner.batcher")


@dataclass(frozen=True)
class Decoded:
    captions: list[Caption]
    running: int  # requests in the running set when this one joined, itself included (the request log's batch size)


class DecodeObserver(Protocol):
    """What the service counts (metrics, health); called on the event loop, must not raise."""

    def answered(self, first_token_s: float) -> None: ...

    def failed(self, error: BaseException) -> None: ...

    def progress(self, progress: DecodeProgress) -> None: ...


@dataclass
class _Pending:
    item: CaptionJob
    future: asyncio.Future[Decoded]
    arrived: float
    deadline: float
    rows: int
    running: int = 0


class ContinuousBatcher:
    def __init__(
        self,
        start_decoding: Callable[[DecodeSink], StepDecoding],
        *,
        rows_for: Callable[[CaptionJob], int],
        max_rows: int,
        max_queue: int,
        request_timeout_s: float = 30.0,
        clock: Clock | None = None,
        observer: DecodeObserver | None = None,
        map_error: Callable[[BaseException], BaseException] | None = None,
    ) -> None:
        if max_rows < 1 or max_queue < 1:
            raise ValueError("max_rows and max_queue must be >= 1")
        self._start_decoding = start_decoding
        self._rows_for = rows_for
        self.max_rows = max_rows
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        self._clock: Clock = clock or MonotonicClock()
        self._observer = observer
        self._map_error = map_error or _as_captioner_error
        self._queue: deque[_Pending] = deque()
        self._live: dict[int, _Pending] = {}
        self._rows_in_use = 0
        self._ids = itertools.count(1)
        self._wakeup = asyncio.Event()
        self._closing = False
        self._decoding: StepDecoding | None = None
        self._task: asyncio.Task[None] | None = None
        self.stats = BatcherStats()

    # -- the batcher's public API (service.py uses either) ------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        return bool(self._live)

    def start(self) -> None:
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._decoding = self._start_decoding(_LoopSink(loop, self))
            self._task = loop.create_task(self._schedule(), name="captioner-continuous")

    def submit(self, item: CaptionJob, *, timeout_s: float | None = None) -> asyncio.Future[Decoded]:
        refusal = submission_refusal(
            closing=self._closing, queued=len(self._queue), max_queue=self.max_queue, retry_after_s=self.retry_after_s
        )
        if refusal is not None:
            raise refusal
        now = self._clock.now()
        future: asyncio.Future[Decoded] = asyncio.get_running_loop().create_future()
        timeout = self.request_timeout_s if timeout_s is None else timeout_s
        self._queue.append(_Pending(item, future, now, now + timeout, max(1, self._rows_for(item))))
        self._wakeup.set()
        return future

    async def __call__(self, item: CaptionJob, *, timeout_s: float | None = None) -> Decoded:
        return await await_submitted(self.submit(item, timeout_s=timeout_s), self._wakeup)

    def retry_after_s(self) -> float:
        return 1.0

    def expedite(self) -> None:
        """Nothing to hurry: continuous mode never waits for a batch to fill."""

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Refuse new requests, finish every queued and live one; True if all finished in time."""
        self._closing = True
        self._wakeup.set()
        task = self._task
        finished = True
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                finished = False
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._fail_everything(Overloaded("the server is shutting down"))
        decoding, self._decoding = self._decoding, None
        if decoding is not None:
            await asyncio.to_thread(decoding.close)
        return finished

    # -- answers from the model side (on the event loop) ---------------------------------------------

    def finished(self, request_id: int, captions: list[Caption], first_token_s: float) -> None:
        pending = self._release(request_id)
        if pending is None:
            return  # it left already (cancelled, timed out)
        if not pending.future.done():
            pending.future.set_result(Decoded(captions, pending.running))
        if self._observer is not None:
            self._observer.answered(first_token_s)

    def failed(self, request_id: int, error: BaseException) -> None:
        pending = self._release(request_id)
        if pending is None:
            return
        mapped = self._map_error(error)
        logger.error("continuous decoding failed a request: %r", error, exc_info=error)
        if not pending.future.done():
            pending.future.set_exception(mapped)
        if self._observer is not None:
            self._observer.failed(mapped)

    def progress(self, progress: DecodeProgress) -> None:
        if self._observer is not None:
            self._observer.progress(progress)

    # -- scheduler -----------------------------------------------------------------------------------

    async def _schedule(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                self._decide()
            except Exception:  # a scheduling bug must not leave callers hanging
                logger.exception("continuous scheduler failed; failing every request")
                self._fail_everything(ModelError())
            if self._closing and not self._queue and not self._live:
                return
            deadlines = [p.deadline for p in itertools.chain(self._queue, self._live.values())]
            if deadlines:
                await self._clock.wait_for_event(self._wakeup, max(0.0, min(deadlines) - self._clock.now()))
            else:
                await self._wakeup.wait()

    def _decide(self) -> None:
        now = self._clock.now()
        self._drop_dead_queued(now)
        self._drop_dead_live(now)
        decoding = self._decoding
        if decoding is None or not self._queue:
            return
        count = admissible([p.rows for p in self._queue], rows_in_use=self._rows_in_use, max_rows=self.max_rows)
        for _ in range(count):
            pending = self._queue.popleft()
            request_id = next(self._ids)
            self._live[request_id] = pending
            self._rows_in_use += pending.rows
            pending.running = len(self._live)
            self.stats.items += 1
            decoding.join(request_id, pending.item)

    def _drop_dead_queued(self, now: float) -> None:
        if any(p.future.done() or now >= p.deadline for p in self._queue):
            self._queue = deque(p for p in self._queue if not self._ended_early(p, now))

    def _drop_dead_live(self, now: float) -> None:
        for request_id, pending in list(self._live.items()):
            if self._ended_early(pending, now):
                self._release(request_id)
                if self._decoding is not None:
                    self._decoding.leave(request_id)

    def _ended_early(self, pending: _Pending, now: float) -> bool:
        """True for a request whose caller went away or whose deadline passed (counted; the late one told so)."""
        if pending.future.done():
            self.stats.cancelled += 1
            return True
        if now >= pending.deadline:
            self.stats.expired += 1
            pending.future.set_exception(RequestTimeout())
            return True
        return False

    def _release(self, request_id: int) -> _Pending | None:
        pending = self._live.pop(request_id, None)
        if pending is not None:
            self._rows_in_use -= pending.rows
            self._wakeup.set()
        return pending

    def _fail_everything(self, error: CaptionerError) -> None:
        for request_id in list(self._live):
            pending = self._release(request_id)
            if pending is not None and not pending.future.done():
                pending.future.set_exception(error)
            if self._decoding is not None:
                self._decoding.leave(request_id)
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(error)


class _LoopSink:
    """The model side's reports, moved onto the event loop (they come from its thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, batcher: ContinuousBatcher) -> None:
        self._loop = loop
        self._batcher = batcher

    def finished(self, request_id: int, captions: list[Caption], first_token_s: float) -> None:
        self._post(self._batcher.finished, request_id, captions, first_token_s)

    def failed(self, request_id: int, error: BaseException) -> None:
        self._post(self._batcher.failed, request_id, error)

    def progress(self, progress: DecodeProgress) -> None:
        self._post(self._batcher.progress, progress)

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(callback, *args)


def _as_captioner_error(error: BaseException) -> BaseException:
    if isinstance(error, CaptionerError):
        return error
    wrapped = ModelError()
    wrapped.__cause__ = error
    return wrapped
