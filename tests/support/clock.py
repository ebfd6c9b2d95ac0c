"""The one fake clock: time that moves only when a test says so.

It is every kind of clock the code takes:

- a callable (``clock=`` of ``RateLimiter``, ``CircuitBreaker``, ``JobQuota``, the job and feedback stores...):
  ``clock()`` is the time;
- the batcher's ``Clock`` (``now()`` and ``wait_for_event(event, timeout)``, a timeout measured on this clock).

``advance(seconds)`` moves the time at once and wakes the batcher timers that are due; ``await clock.advance(s)``
also lets the woken tasks run (``settle``) before the test goes on. No wall-clock time passes either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

from tests.support.waits import settle


class FakeClock:
    def __init__(self, start: float = 0.0) -> None:
        self.time = start
        self._timers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.time

    def now(self) -> float:
        return self.time

    def advance(self, seconds: float) -> _Settled:
        self.time += seconds
        for deadline, timer in self._timers:
            if deadline <= self.time and not timer.done():
                timer.set_result(None)
        return _Settled()

    async def wait_for_event(self, event: asyncio.Event, timeout: float) -> None:
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timers.append((self.time + timeout, timer))
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            self._timers = [(d, t) for d, t in self._timers if t is not timer]


class _Settled:
    """What ``advance`` returns: awaiting it lets every task the move woke run to its next wait."""

    def __await__(self) -> Generator[Any, None, None]:
        return settle().__await__()
