"""Async jobs: the stores and the manager in isolation, then end to end through real HTTP with the tiny model,
in memory and in a real redis-server shared by two replicas."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest

from captioner.errors import InvalidImage, NotFound, Overloaded
from captioner.jobs.manager import JobManager
from captioner.jobs.queue import JobRequest, MemoryJobQueue
from captioner.jobs.records import Job, MemoryJobStore
from captioner.observability.metrics import Metrics
from tests.support.clock import FakeClock

CAPTION = "/api/v1/caption"


def job(job_id: str, status: str = "processing", expires_at: float = 2000.0) -> Job:
    return Job(job_id, status, None if status == "processing" else {"status": status}, None, expires_at)  # type: ignore[arg-type]


# --- stores and manager, no HTTP ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_memory_store_evicts_the_oldest_finished_job_and_refuses_when_all_are_running() -> None:
    store = MemoryJobStore(max_jobs=2, clock=FakeClock(1000.0))
    await store.add(job("a"))
    await store.add(job("b"))
    with pytest.raises(Overloaded):
        await store.add(job("c"))  # both still running: nothing may be dropped
    await store.update(job("a", "success"))
    await store.add(job("c"))  # a finished, so a goes
    assert await store.get("a") is None
    assert (await store.get("b")) is not None and (await store.get("c")) is not None
    assert len(store) == 2


@pytest.mark.anyio
async def test_memory_store_forgets_expired_jobs() -> None:
    clock = FakeClock(1000.0)
    store = MemoryJobStore(max_jobs=10, clock=clock)
    await store.add(job("a", expires_at=clock() + 60))
    clock.advance(59)
    assert await store.get("a") is not None
    clock.advance(2)
    assert await store.get("a") is None
    await store.add(job("b", expires_at=clock() + 60))
    assert len(store) == 1  # adding swept the expired one out


def memory_manager(metrics: Metrics, store: MemoryJobStore | None = None) -> JobManager:
    queue = MemoryJobQueue(store if store is not None else MemoryJobStore(max_jobs=10), ttl_s=60, max_keys=10)
    return JobManager(queue, ttl_s=60, metrics=metrics)


def job_request(url: str, owner: str | None = None) -> JobRequest:
    """A job whose fake runner below acts on its ``url``."""
    return JobRequest(secrets.token_hex(16), owner, 1, url=url)


@pytest.mark.anyio
async def test_manager_records_success_errors_and_ownership() -> None:
    metrics = Metrics()
    manager = memory_manager(metrics)
    release = asyncio.Event()

    async def run(request: JobRequest, deadline: float) -> dict[str, Any]:
        if request.url == "ok":
            await release.wait()
            return {"status": "success", "captions": []}
        if request.url == "bad":
            raise InvalidImage("not an image")
        raise RuntimeError("secret internals")

    manager.start_worker(run, capacity=4, request_timeout_s=30, lease_s=30, callbacks=None)
    first = (await manager.submit(job_request("ok", owner="key:aaa"))).job
    assert len(first.job_id) == 32
    running = await manager.get(first.job_id, principal="key:aaa")
    assert running.body() == {"status": "processing", "job_id": first.job_id}
    with pytest.raises(NotFound):
        await manager.get(first.job_id, principal="key:bbb")  # another key's job reads as unknown
    release.set()
    failed = (await manager.submit(job_request("bad"))).job
    crashed = (await manager.submit(job_request("bug"))).job
    await manager.close(5)
    assert (await manager.get(first.job_id, principal="key:aaa")).body() == {
        "status": "success", "captions": [], "job_id": first.job_id,
    }  # fmt: skip
    assert (await manager.get(failed.job_id, principal=None)).body()["error"] == {
        "code": "invalid_image", "message": "not an image",
    }  # fmt: skip
    crash_body = (await manager.get(crashed.job_id, principal=None)).body()
    assert crash_body["error"]["code"] == "internal_error" and "secret" not in crash_body["error"]["message"]
    with pytest.raises(NotFound):
        await manager.get("0" * 32, principal=None)
    with pytest.raises(NotFound):
        await manager.get("../etc/passwd", principal=None)


@pytest.mark.anyio
async def test_manager_shutdown_records_an_error_for_jobs_that_could_not_finish() -> None:
    store = MemoryJobStore(max_jobs=10)
    manager = memory_manager(Metrics(), store)

    async def forever(request: JobRequest, deadline: float) -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    manager.start_worker(forever, capacity=1, request_timeout_s=30, lease_s=30, callbacks=None)
    stuck = (await manager.submit(job_request("x"))).job
    never_started = (await manager.submit(job_request("y"))).job  # capacity 1: it waits behind the stuck one
    await manager.close(0.05)
    for job_id in (stuck.job_id, never_started.job_id):
        record = await store.get(job_id)
        assert record is not None and record.status == "error"
        assert record.body()["error"]["code"] == "overloaded"


# --- end to end --------------------------------------------------------------------------------------------
