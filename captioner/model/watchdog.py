"""``health.watchdog_s``: a model process with a batch in flight and no progress this long is treated as dead.

A model process can stop without dying: ``kill -STOP``, a driver hang, a deadlock in a native library. Its
supervisor sees a live process, so nothing else notices: ``/readyz`` stays 200 and every request waits out its
deadline (504). The watchdog times the batch in flight, the only thing the server waits on the child for; a batch
that has not come back after ``watchdog_s`` means the process is stuck. ``process_worker.py`` then reports it
down (``/readyz`` 503), kills it (SIGKILL: a stopped or hung process ignores anything gentler) and respawns it;
the batch's requests get 503 + Retry-After (``ModelLost``), their jobs go back to the queue.

Progress is a batch's answer: one ``generate`` call is opaque to the server. So ``watchdog_s`` must exceed the
longest legitimate batch, a first batch under ``model.compile`` included (docs/configuration.md).

``stalled`` is the pure decision; ``BatchWatchdog`` keeps the one batch in flight (calls are serialised) for the
supervisor thread to check, with an injectable clock.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


def stalled(*, since: float | None, now: float, watchdog_s: float) -> bool:
    """Whether a batch sent at ``since`` (None: no batch in flight) has made no progress for too long at ``now``;
    ``watchdog_s`` 0 turns the watchdog off."""
    if since is None or watchdog_s <= 0:
        return False
    return now - since >= watchdog_s


@dataclass(frozen=True)
class Stall:
    batch: int  # which batch (a sequence number): the supervisor kills only if this one is still in flight
    seconds: float  # how long it has been in flight


class BatchWatchdog:
    def __init__(self, watchdog_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.watchdog_s = watchdog_s
        self._clock = clock
        self._lock = threading.Lock()  # the model thread starts and ends batches, the supervisor checks
        self._numbers = itertools.count(1)
        self._batch = 0
        self._since: float | None = None

    def started(self) -> int:
        """A batch was sent to the model process; returns its number."""
        with self._lock:
            self._batch = next(self._numbers)
            self._since = self._clock()
            return self._batch

    def ended(self, batch: int) -> None:
        """That batch came back (or failed): nothing in flight."""
        with self._lock:
            if self._batch == batch:
                self._since = None

    def stall(self) -> Stall | None:
        """The batch in flight, if it has been stuck for ``watchdog_s``; None otherwise."""
        with self._lock:
            now = self._clock()
            if not stalled(since=self._since, now=now, watchdog_s=self.watchdog_s):
                return None
            assert self._since is not None
            return Stall(self._batch, now - self._since)

    def still_in_flight(self, batch: int) -> bool:
        with self._lock:
            return self._batch == batch and self._since is not None
