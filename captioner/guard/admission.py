"""The admission budget: one count of everything accepted and not yet answered, refused at the door when full.

Counting only the batcher's queue misses most of what a request costs: its body (up to ``max_body_bytes``)
while it is read, a URL fetch, hashing, decoding (the CPU-heavy part of a big PNG), then the queue and the
generate call. An async job costs all of that too, after its 202. So every admitted request takes one ticket
from ``limits.max_in_flight`` *before its body is read* and gives it back when it is answered; an async job
carries its request's ticket until the job ends. With no ticket left the answer is 503 ``overloaded`` with a
``Retry-After``, at the cost of reading the request's head only. Memory then stays bounded by the budget
times the body limit (plus the preprocessing threads' decode buffers), however fast requests arrive.

Fairness: one caller (API key, or client address without auth) may hold at most
``jobs.max_running_per_principal`` running async jobs (auto: half the budget), so one flooding caller can't
keep every ticket; past it, 429 ``rate_limited`` (its own limit, not the replica's: a load balancer must not
retry it elsewhere, which it does with a 503).

Exported for autoscaling: ``captioner_admission_in_use`` and ``captioner_admission_capacity`` (their ratio is
the replica's load, whatever the kind of work), ``captioner_admission_refused_total{reason}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from captioner.config import Settings
from captioner.errors import Overloaded, RateLimited, error_response
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
    """One admitted request's share of the budget. ``release`` may be called any number of times."""

    def __init__(self, budget: AdmissionBudget) -> None:
        self._budget = budget
        self._taken = time.monotonic()
        self._held = True
        self.handed_over = False  # an async job took it: the job, not the request, gives it back

    def release(self) -> None:
        if self._held:
            self._held = False
            self._budget._give_back(time.monotonic() - self._taken)


class AdmissionBudget:
    """Tickets for requests in flight; used only from the event loop's thread, so no lock is needed."""

    def __init__(self, capacity: int, *, metrics: Metrics | None = None, jobs_per_principal: int | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.in_use = 0
        self.jobs_per_principal = jobs_per_principal or max(1, capacity // 2)
        self._jobs: dict[str, int] = {}  # principal -> async jobs running; absent when 0, so it stays small
        self._mean_hold_s = 1.0
        self._metrics = metrics
        if metrics is not None:
            metrics.admission_capacity.set(capacity)
            metrics.admission_in_use.set_function(lambda: self.in_use)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> AdmissionBudget:
        return cls(admission_capacity(settings), metrics=metrics, jobs_per_principal=jobs_per_principal(settings))

    def retry_after_s(self) -> float:
        """About when a ticket frees up: the typical time one is held, within [1, 30] s."""
        return min(_MAX_RETRY_AFTER_S, max(1.0, self._mean_hold_s))

    def acquire(self) -> Ticket:
        """A ticket, or ``Overloaded`` (503 + Retry-After) when the budget is spent."""
        if self.in_use >= self.capacity:
            self._refused("budget")
            raise Overloaded(
                f"the server is at capacity ({self.capacity} requests in flight), retry later",
                retry_after_s=self.retry_after_s(),
            )
        self.in_use += 1
        return Ticket(self)

    def start_job(self, principal: str) -> Callable[[], None]:
        """Count one more running async job for ``principal``; returns the call that counts it finished.

        Raises ``RateLimited`` (429) when the caller already runs ``jobs_per_principal`` jobs.
        """
        running = self._jobs.get(principal, 0)
        if running >= self.jobs_per_principal:
            self._refused("principal_jobs")
            raise RateLimited(
                f"at most {self.jobs_per_principal} async jobs may run at once per caller; retry later",
                retry_after_s=self.retry_after_s(),
            )
        self._jobs[principal] = running + 1
        done = False

        def finish() -> None:
            nonlocal done
            if done:
                return
            done = True
            left = self._jobs.get(principal, 1) - 1
            if left > 0:
                self._jobs[principal] = left
            else:
                self._jobs.pop(principal, None)

        return finish

    def jobs_running(self, principal: str) -> int:
        return self._jobs.get(principal, 0)

    def _give_back(self, held_s: float) -> None:
        self.in_use -= 1
        self._mean_hold_s += _HOLD_WEIGHT * (held_s - self._mean_hold_s)

    def _refused(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.admission_refused.labels(reason).inc()


def admission_ticket(scope: Scope) -> Ticket | None:
    """The ticket ``AdmissionGate`` gave this request (None for requests it does not admit)."""
    ticket = scope.get("state", {}).get(_TICKET)
    return ticket if isinstance(ticket, Ticket) else None


class AdmissionGate:
    """ASGI middleware: a ticket for each request that ``admits(scope)``, before the app reads the body.

    The ticket is given back when the app returns, unless an async job took it over (``Ticket.handed_over``).
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
            if not ticket.handed_over:
                ticket.release()
