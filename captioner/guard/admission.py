"""The admission budget: one count of everything accepted and not yet answered, refused at the door when full.

Counting only the batcher's queue misses most of what a request costs: its body (up to ``max_body_bytes``)
while it is read, a URL fetch, hashing, decoding (the CPU-heavy part of a big PNG), then the queue and the
generate call. An async job costs all of that too, when a worker runs it. So every admitted request takes one
ticket from ``limits.max_in_flight`` *before its body is read* and gives it back when it is answered, and the
job worker takes one for each job it runs (waiting for it: the job is accepted already). With no ticket left a
request is answered 503 ``overloaded`` with a ``Retry-After``, at the cost of reading its head only. Memory
then stays bounded by the budget times the body limit (plus the preprocessing threads' decode buffers), however
fast requests arrive; jobs waiting in the queue are bounded by ``job_quota.py``.

Exported for autoscaling: ``captioner_admission_in_use`` and ``captioner_admission_capacity`` (their ratio is
the replica's load, whatever the kind of work), ``captioner_admission_refused_total{reason}`` (budget,
principal_jobs, job_bytes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from captioner.config import Settings
from captioner.errors import Overloaded, error_response
from captioner.observability.metrics import Metrics

_TICKET = "admission_ticket"
# The mean time a ticket is held is averaged with this weight per release; it sizes Retry-After.
_HOLD_WEIGHT = 0.05
_MAX_RETRY_AFTER_S = 30.0


def admission_capacity(settings: Settings) -> int:
    """``limits.max_in_flight``, or when 0: the batcher's queue plus two batches (the one running, the next)."""
    configured = settings.limits.max_in_flight
    return configured or settings.batching.max_queue + 2 * settings.batching.max_batch_size


def jobs_per_principal(settings: Settings) -> int:
    configured = settings.jobs.max_running_per_principal
    return configured or max(1, admission_capacity(settings) // 2)


class Ticket:
    """One admitted request's (or running job's) share of the budget. ``release`` may be called any number of
    times."""

    def __init__(self, budget: AdmissionBudget) -> None:
        self._budget = budget
        self._taken = time.monotonic()
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._budget._give_back(time.monotonic() - self._taken)

    async def __aenter__(self) -> Ticket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class AdmissionBudget:
    """Tickets for requests in flight; used only from the event loop's thread, so no lock is needed."""

    def __init__(self, capacity: int, *, metrics: Metrics | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.in_use = 0
        self._freed = asyncio.Event()
        self._mean_hold_s = 1.0
        self._metrics = metrics
        if metrics is not None:
            metrics.admission_capacity.set(capacity)
            metrics.admission_in_use.set_function(lambda: self.in_use)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> AdmissionBudget:
        return cls(admission_capacity(settings), metrics=metrics)

    def retry_after_s(self) -> float:
        """About when a ticket frees up: the typical time one is held, within [1, 30] s."""
        return min(_MAX_RETRY_AFTER_S, max(1.0, self._mean_hold_s))

    def acquire(self) -> Ticket:
        """A ticket, or ``Overloaded`` (503 + Retry-After) when the budget is spent."""
        if self.in_use >= self.capacity:
            self.refused("budget")
            raise Overloaded(
                f"the server is at capacity ({self.capacity} requests in flight), retry later",
                retry_after_s=self.retry_after_s(),
            )
        self.in_use += 1
        return Ticket(self)

    async def acquire_waiting(self) -> Ticket:
        """A ticket as soon as one is free: for accepted work (a queued job), which has no one to say 503 to."""
        while self.in_use >= self.capacity:
            self._freed.clear()
            await self._freed.wait()
        self.in_use += 1
        return Ticket(self)

    def refused(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.admission_refused.labels(reason).inc()

    def _give_back(self, held_s: float) -> None:
        self.in_use -= 1
        self._mean_hold_s += _HOLD_WEIGHT * (held_s - self._mean_hold_s)
        self._freed.set()


def admission_ticket(scope: Scope) -> Ticket | None:
    """The ticket ``AdmissionGate`` gave this request (None for requests it does not admit)."""
    ticket = scope.get("state", {}).get(_TICKET)
    return ticket if isinstance(ticket, Ticket) else None


class AdmissionGate:
    """ASGI middleware: a ticket for each request that ``admits(scope)``, before the app reads the body.

    The ticket is given back when the app returns.
    """

    def __init__(self, app: ASGIApp, *, budget: AdmissionBudget, admits: Callable[[Scope], bool]) -> None:
        self.app = app
        self.budget = budget
        self.admits = admits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.admits(scope):
            await self.app(scope, receive, send)
            return
        try:
            ticket = self.budget.acquire()
        except Overloaded as refused:
            await error_response(refused)(scope, receive, send)
            return
        scope.setdefault("state", {})[_TICKET] = ticket
        try:
            await self.app(scope, receive, send)
        finally:
            ticket.release()
