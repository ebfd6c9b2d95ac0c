"""Outstanding async jobs (queued or running) that this replica accepted: per caller, and their input bytes.

The admission budget (``admission.py``) bounds work in flight; a job, though, is answered 202 at once and then
waits in the queue holding its input (an image of up to ``max_body_bytes``, or just a URL). Two bounds keep
that from growing without limit, both checked when the job is accepted:

- per caller (API key, or client address without auth): at most ``jobs.max_running_per_principal`` outstanding
  jobs (auto: half the budget; a keys-file tenant's ``max_running_jobs`` where it sets one); past it 429
  ``rate_limited`` + Retry-After, decided from the request head, before
  the body is read. One caller can't fill the queue, nor hold every ticket the jobs take when they run;
- in all: the images held by outstanding jobs at most ``max_in_flight x max_body_bytes`` bytes (the same as the
  requests in flight may hold); past it 503 ``overloaded``.

A job stops counting when it ends on this replica (``ended``, from the job runner). With ``jobs.queue: redis``
another replica may run it: when a caller is at its cap, or the bytes at theirs, the jobs still counted are
looked up in the queue (at most once a second), and those that ended anywhere are let go.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from captioner.config import Settings
from captioner.errors import Overloaded, RateLimited
from captioner.guard.admission import AdmissionBudget, admission_capacity, jobs_per_principal

_REFRESH_EVERY_S = 1.0
IsOpen = Callable[[str], Awaitable[bool]]  # job id -> still queued or running?


@dataclass
class _Outstanding:
    principal: str
    nbytes: int


class Reservation:
    """A caller's place for one job, taken before its body is read; ``bind`` it to the job, or ``cancel`` it."""

    def __init__(self, quota: JobQuota, principal: str) -> None:
        self._quota = quota
        self.principal = principal
        self._open = True

    def bind(self, job_id: str, nbytes: int) -> None:
        if self._open:
            self._open = False
            self._quota._bind(self, job_id, nbytes)

    def cancel(self) -> None:
        if self._open:
            self._open = False
            self._quota._release_reservation(self.principal)


class JobQuota:
    def __init__(
        self,
        *,
        per_principal: int,
        max_bytes: int,
        retry_after_s: Callable[[], float] = lambda: 1.0,
        on_refused: Callable[[str], None] = lambda reason: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_principal = per_principal
        self.max_bytes = max_bytes
        self._retry_after_s = retry_after_s
        self._on_refused = on_refused
        self._clock = clock
        self._jobs: dict[str, _Outstanding] = {}
        self._counts: dict[str, int] = {}  # principal -> reservations + outstanding jobs; absent when 0
        self.bytes = 0
        self._refreshed_at = float("-inf")

    @classmethod
    def from_settings(cls, settings: Settings, budget: AdmissionBudget) -> JobQuota:
        return cls(
            per_principal=jobs_per_principal(settings),
            max_bytes=admission_capacity(settings) * settings.limits.max_body_bytes,
            retry_after_s=budget.retry_after_s,
            on_refused=budget.refused,
        )

    def outstanding(self, principal: str) -> int:
        return self._counts.get(principal, 0)

    async def reserve(self, principal: str, is_open: IsOpen, limit: int | None = None) -> Reservation:
        """A place for one more job of ``principal``, or ``RateLimited`` (429) when it has its cap already.
        ``limit``: the caller's own cap (a tenant's ``max_running_jobs``); None or 0: ``per_principal``."""
        cap = limit or self.per_principal
        if self.outstanding(principal) >= cap:
            await self._refresh(is_open)
        if self.outstanding(principal) >= cap:
            self._on_refused("principal_jobs")
            raise RateLimited(
                f"at most {cap} async jobs may be outstanding per caller; retry later",
                retry_after_s=self._retry_after_s(),
            )
        self._counts[principal] = self.outstanding(principal) + 1
        return Reservation(self, principal)

    async def check_bytes(self, nbytes: int, is_open: IsOpen) -> None:
        """``Overloaded`` (503) when queueing ``nbytes`` more would pass the byte bound."""
        if self.bytes + nbytes > self.max_bytes:
            await self._refresh(is_open)
        if self.bytes + nbytes > self.max_bytes:
            self._on_refused("job_bytes")
            raise Overloaded(
                "too many queued job images on this replica, retry later", retry_after_s=self._retry_after_s()
            )

    def ended(self, job_id: str) -> None:
        """The job ended (any outcome); idempotent, and a no-op for jobs another replica accepted."""
        job = self._jobs.pop(job_id, None)
        if job is not None:
            self.bytes -= job.nbytes
            self._release_reservation(job.principal)

    def _bind(self, reservation: Reservation, job_id: str, nbytes: int) -> None:
        self._jobs[job_id] = _Outstanding(reservation.principal, nbytes)
        self.bytes += nbytes

    def _release_reservation(self, principal: str) -> None:
        left = self.outstanding(principal) - 1
        if left > 0:
            self._counts[principal] = left
        else:
            self._counts.pop(principal, None)

    async def _refresh(self, is_open: IsOpen) -> None:
        now = self._clock()
        if now - self._refreshed_at < _REFRESH_EVERY_S:
            return
        self._refreshed_at = now
        for job_id in list(self._jobs):
            if not await is_open(job_id):
                self.ended(job_id)
