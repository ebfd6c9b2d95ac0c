"""``JobManager.wait`` rides out a brief job-store outage (issue 21, item 3): a relayed request whose job is still
running is not answered 503 because Redis blinked, only after ``outage_s`` of it. A fake queue and clock; the real
Redis restart is tests/system/test_redis_faults.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from captioner.errors import RequestTimeout
from captioner.jobs.manager import JobManager
from captioner.jobs.queue import Claim, JobRequest, QueueStats, Submitted
from captioner.jobs.records import Job, JobStatus, StoreUnavailable
from captioner.observability.metrics import Metrics

pytestmark = pytest.mark.anyio

JOB = "a" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FlakyRecords:
    """A queue whose ``get`` answers from a script: "down" raises StoreUnavailable, else a status. Each look
    moves the fake clock on by ``step_s``."""

    redelivers = True
    max_attempts = 3

    def __init__(self, clock: Clock, script: Sequence[str], step_s: float = 1.0) -> None:
        self.clock = clock
        self.script = list(script)
        self.step_s = step_s
        self.looks = 0

    async def get(self, job_id: str) -> Job | None:
        self.looks += 1
        self.clock.now += self.step_s
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if answer == "down":
            raise StoreUnavailable("the job queue (Redis) is unavailable", retry_after_s=1)
        result = None if answer == "processing" else {"status": "success", "captions": []}
        return Job(job_id, answer, result, None, 1e12)  # type: ignore[arg-type]

    async def start(self) -> None: ...
    async def submit(self, request: JobRequest, *, idempotency_key: str | None) -> Submitted:
        raise NotImplementedError

    async def claim(self, count: int, *, wait_s: float) -> list[Claim]:
        return []

    async def renew(self, claims: Sequence[Claim]) -> None: ...
    async def finish(self, claim: Claim, status: JobStatus, result: dict[str, Any]) -> bool:
        return True

    async def settle(self, claim: Claim) -> None: ...
    async def abandon(self, claim: Claim) -> None: ...
    async def release(self, claim: Claim, *, lost: bool) -> None: ...
    async def stats(self) -> QueueStats:
        return QueueStats(0, 0, 0.0)

    async def aclose(self) -> None: ...


def manager(records: FlakyRecords, clock: Clock, outage_s: float = 10.0) -> JobManager:
    return JobManager(records, ttl_s=60, metrics=Metrics(), clock=clock, outage_s=outage_s)  # type: ignore[arg-type]


async def test_a_brief_outage_is_waited_out_and_the_result_returned() -> None:
    clock = Clock()
    records = FlakyRecords(clock, ["processing", "down", "down", "down", "processing", "success"])
    job = await manager(records, clock).wait(JOB, principal=None, deadline=60.0)
    assert job.status == "success" and records.looks == 6


async def test_each_outage_is_timed_on_its_own() -> None:
    clock = Clock()
    # Two outages of 8 looks (8 s) each, with the store answering in between: neither reaches 10 s.
    records = FlakyRecords(clock, [*["down"] * 8, "processing", *["down"] * 8, "success"])
    job = await manager(records, clock).wait(JOB, principal=None, deadline=60.0)
    assert job.status == "success"


async def test_an_outage_of_outage_s_gives_up_with_503() -> None:
    clock = Clock()
    records = FlakyRecords(clock, ["processing", "down"])
    with pytest.raises(StoreUnavailable) as refused:
        await manager(records, clock, outage_s=10.0).wait(JOB, principal=None, deadline=60.0)
    assert refused.value.status_code == 503 and refused.value.headers["Retry-After"] == "1"
    assert 10 <= records.looks <= 12  # about ten seconds of looks, one a (fake) second


async def test_the_request_deadline_still_ends_the_wait_during_an_outage() -> None:
    clock = Clock()
    records = FlakyRecords(clock, ["down"])
    with pytest.raises(RequestTimeout):
        await manager(records, clock, outage_s=10.0).wait(JOB, principal=None, deadline=3.0)
    assert records.looks == 3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
