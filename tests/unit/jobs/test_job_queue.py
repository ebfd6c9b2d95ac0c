"""The in-process job queue and the worker loop, with fake runners (timing and faults under the test's control).
The Redis queue's logic is tested against a real redis-server in tests/system/test_redis_job_queue.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from captioner.errors import InvalidRequest, ModelError, Overloaded
from captioner.jobs.manager import JobManager
from captioner.jobs.queue import JobRequest, MemoryJobQueue
from captioner.jobs.records import MemoryJobStore
from captioner.jobs.worker import JobWorker
from captioner.observability.metrics import Metrics
from tests.support.clock import FakeClock
from tests.support.waits import settle

pytestmark = pytest.mark.anyio


def request(job_id: str, owner: str | None = "key:alpha", **kwargs: Any) -> JobRequest:
    return JobRequest(job_id, owner, kwargs.pop("num_captions", 1), **{"image": b"image bytes", **kwargs})


def memory_queue(max_jobs: int = 10, clock: FakeClock | None = None) -> MemoryJobQueue:
    clock = clock or FakeClock(1000.0)
    return MemoryJobQueue(MemoryJobStore(max_jobs=max_jobs, clock=clock), ttl_s=60, max_keys=100, clock=clock)


async def test_the_same_key_and_owner_get_the_same_job_and_another_owner_its_own() -> None:
    queue = memory_queue()
    first = await queue.submit(request("1" * 32), idempotency_key="k-1")
    again = await queue.submit(request("2" * 32), idempotency_key="k-1")
    assert not first.replayed and again.replayed and again.job.job_id == "1" * 32
    other = await queue.submit(request("3" * 32, owner="key:beta"), idempotency_key="k-1")
    anonymous = await queue.submit(request("4" * 32, owner=None), idempotency_key="k-1")
    assert {other.job.job_id, anonymous.job.job_id} == {"3" * 32, "4" * 32}
    without_key = await queue.submit(request("5" * 32), idempotency_key=None)
    assert not without_key.replayed
    with pytest.raises(InvalidRequest, match="different request"):
        await queue.submit(request("6" * 32, num_captions=2), idempotency_key="k-1")
    claims = await queue.claim(10, wait_s=0)
    assert [c.request.job_id for c in claims] == ["1" * 32, "3" * 32, "4" * 32, "5" * 32]  # one job per key


async def test_a_key_is_forgotten_with_its_job() -> None:
    clock = FakeClock(1000.0)
    queue = memory_queue(clock=clock)
    await queue.submit(request("1" * 32), idempotency_key="k")
    clock.advance(61)  # past jobs.ttl_s
    again = await queue.submit(request("2" * 32), idempotency_key="k")
    assert not again.replayed and again.job.job_id == "2" * 32


async def test_claim_waits_for_a_job_and_returns_at_most_count() -> None:
    queue = memory_queue()
    waiting = asyncio.ensure_future(queue.claim(2, wait_s=30))
    await settle()
    assert not waiting.done()
    for n in "123":
        await queue.submit(request(n * 32), idempotency_key=None)
    claims = await waiting
    assert [c.request.job_id for c in claims] == ["1" * 32, "2" * 32]  # at most count, oldest first
    assert [c.request.job_id for c in await queue.claim(5, wait_s=0)] == ["3" * 32]
    assert await queue.claim(5, wait_s=0) == []
    assert (await queue.stats()).length == 3  # three claimed, none settled


async def test_a_full_queue_refuses_while_every_job_is_running() -> None:
    queue = memory_queue(max_jobs=2)
    await queue.submit(request("1" * 32), idempotency_key=None)
    await queue.submit(request("2" * 32), idempotency_key=None)
    with pytest.raises(Overloaded):
        await queue.submit(request("3" * 32), idempotency_key=None)


async def test_the_worker_runs_at_most_capacity_jobs_at_once_and_records_each_result() -> None:
    queue = memory_queue()
    metrics = Metrics()
    gate = asyncio.Event()
    running: list[str] = []
    most = 0

    async def run(job: JobRequest, deadline: float) -> dict[str, Any]:
        nonlocal most
        running.append(job.job_id)
        most = max(most, len(running))
        await gate.wait()
        running.remove(job.job_id)
        return {"status": "success", "captions": [], "n": job.job_id[0]}

    manager = JobManager(queue, ttl_s=60, metrics=metrics, batch_size=2)
    manager.start_worker(run, capacity=2, request_timeout_s=30, lease_s=30, callbacks=None)
    for n in "12345":
        await manager.submit(request(n * 32), idempotency_key=None)
    await settle()
    assert sorted(running) == ["1" * 32, "2" * 32]  # the other three wait in the queue
    gate.set()
    for n in "12345":
        job = await manager.wait(n * 32, principal="key:alpha", deadline=time.monotonic() + 60)
        assert job.status == "success" and job.result == {"status": "success", "captions": [], "n": n}
    await manager.close(5)
    assert most == 2


async def test_the_memory_queue_never_redelivers_a_transient_failure() -> None:
    queue = memory_queue()

    async def fails(job: JobRequest, deadline: float) -> dict[str, Any]:
        raise ModelError()

    worker = JobWorker(queue, fails, metrics=Metrics(), capacity=1, request_timeout_s=30, lease_s=30)
    worker.start()
    await queue.submit(request("1" * 32), idempotency_key=None)
    for _ in range(100):
        await settle()
        job = await queue.get("1" * 32)
        if job is not None and job.status != "processing":
            break
    await worker.close(1)
    assert job is not None and job.status == "error" and job.result is not None
    assert job.result["error"]["code"] == "model_error"  # the only process that could retry it is this one


async def test_estimate_grows_with_the_backlog() -> None:
    manager = JobManager(memory_queue(), ttl_s=60, metrics=Metrics(), batch_size=4)
    empty = manager.estimate_s()
    for n in "12345678":
        await manager.submit(request(n * 32), idempotency_key=None)
    assert manager.estimate_s() == pytest.approx(empty * 3)  # two batches ahead
