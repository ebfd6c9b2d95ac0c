"""The durable job queue's logic against a real redis-server, without a model: submission, the stream bound,
idempotency, leases and their renewal, redelivery with attempt numbers, the dead letter after max_attempts
(a crash loop, simulated by workers that stop without acknowledging), exactly one result per job, and the image
bytes' lifetime."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from captioner.errors import InvalidRequest, ModelError, Overloaded
from captioner.jobs.durable_queue import DurableJobQueue
from captioner.jobs.queue import JobRequest
from captioner.jobs.worker import JobWorker
from captioner.observability.metrics import Metrics
from captioner.shared_state.job_stream import GROUP, IMAGE_PREFIX, RECORD_PREFIX, STREAM, RedisJobStream
from captioner.shared_state.redis_client import RedisClient
from tests.support.metrics import metric_value
from tests.support.redis import RedisServer
from tests.support.waits import async_wait_for

pytestmark = pytest.mark.anyio

IMAGE = b"\x89PNG fake image bytes"


class Queues:
    """Queues (one consumer each, like replicas) on one redis-server, closed at the end."""

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        self.made: list[DurableJobQueue] = []

    def __call__(self, consumer: str, *, lease_s: float = 0.3, max_attempts: int = 2, **kwargs: Any) -> DurableJobQueue:
        client = RedisClient(self.redis.url, name="jobs", timeout_s=2.0)
        blocking = RedisClient(self.redis.url, name="jobs-consumer", timeout_s=2.5)
        stream = RedisJobStream(
            client, blocking, consumer=consumer, max_length=kwargs.get("max_jobs", 100),
            ttl_s=kwargs.get("ttl_s", 60.0), lease_s=lease_s, block_s=0.05,
        )  # fmt: skip
        queue = DurableJobQueue(stream, ttl_s=kwargs.get("ttl_s", 60.0), lease_s=lease_s, max_attempts=max_attempts)
        self.made.append(queue)
        return queue

    def command(self, *args: str) -> str:
        return self.redis.command(*args).decode(errors="replace")


@pytest.fixture
async def queues(tmp_path: Path) -> AsyncIterator[Queues]:
    with RedisServer(tmp_path) as redis:
        made = Queues(redis)
        yield made
        for queue in made.made:
            await queue.aclose()


def request(job_id: str, **kwargs: Any) -> JobRequest:
    owner, num_captions = kwargs.pop("owner", "key:alpha"), kwargs.pop("num_captions", 2)
    return JobRequest(job_id, owner, num_captions, **{"image": IMAGE, **kwargs})


def integer(reply: str) -> int:
    return int(reply.strip().lstrip(":"))


async def test_a_job_goes_in_runs_once_and_leaves_nothing_behind(queues: Queues) -> None:
    queue = queues("a")
    await queue.start()
    submitted = await queue.submit(request("a" * 32, callback_url="https://example.com/hook"), idempotency_key=None)
    assert not submitted.replayed and submitted.job.status == "processing"
    assert integer(queues.command("XLEN", STREAM)) == 1
    assert 0 < integer(queues.command("PTTL", IMAGE_PREFIX + "a" * 32)) <= 60_000  # never outlives jobs.ttl_s
    (claim,) = await queue.claim(5)
    assert claim.attempt == 1 and claim.finished is None and not claim.lost_input
    assert claim.request == request("a" * 32, callback_url="https://example.com/hook")
    assert claim.request.image == IMAGE
    assert await queue.claim(5, wait_s=0) == []  # delivered once
    assert await queue.finish(claim, "success", {"status": "success", "captions": []})
    assert integer(queues.command("EXISTS", IMAGE_PREFIX + "a" * 32)) == 0  # the image goes when the job ends
    await queue.settle(claim)
    assert integer(queues.command("XLEN", STREAM)) == 0
    stats = await queue.stats()
    assert (stats.length, stats.pending) == (0, 0)
    job = await queue.get("a" * 32)
    assert job is not None and job.body() == {"status": "success", "captions": [], "job_id": "a" * 32}
    assert 59_000 < integer(queues.command("PTTL", RECORD_PREFIX + "a" * 32)) <= 60_000


async def test_a_full_stream_refuses_new_jobs_with_retry_after(queues: Queues) -> None:
    queue = queues("a", max_jobs=2)
    await queue.start()
    await queue.submit(request("1" * 32), idempotency_key=None)
    await queue.submit(request("2" * 32), idempotency_key=None)
    with pytest.raises(Overloaded) as refused:
        await queue.submit(request("3" * 32), idempotency_key=None)
    assert refused.value.headers["Retry-After"] == "5"
    assert integer(queues.command("EXISTS", RECORD_PREFIX + "3" * 32)) == 0  # all or nothing
    (claim, _) = await queue.claim(2)
    await queue.finish(claim, "success", {"status": "success"})
    await queue.settle(claim)
    assert (await queue.submit(request("3" * 32), idempotency_key=None)).job.job_id == "3" * 32


async def test_an_idempotency_key_makes_one_job_per_owner(queues: Queues) -> None:
    queue = queues("a")
    first = await queue.submit(request("1" * 32), idempotency_key="order-7")
    again = await queue.submit(request("2" * 32), idempotency_key="order-7")
    assert again.replayed and again.job.job_id == first.job.job_id == "1" * 32
    other_owner = await queue.submit(request("3" * 32, owner="key:beta"), idempotency_key="order-7")
    assert not other_owner.replayed and other_owner.job.job_id == "3" * 32
    with pytest.raises(InvalidRequest, match="different request"):
        await queue.submit(request("4" * 32, num_captions=1), idempotency_key="order-7")
    assert integer(queues.command("XLEN", STREAM)) == 2


async def test_a_silent_consumers_job_moves_to_another_after_the_lease_unless_renewed(queues: Queues) -> None:
    a, b = queues("a", lease_s=0.3), queues("b", lease_s=0.3)
    await a.start()
    await a.submit(request("a" * 32), idempotency_key=None)
    (claim,) = await a.claim(1)
    claimed_at = time.monotonic()
    # While a renews its lease, b never gets the job: well past three leases.
    while time.monotonic() - claimed_at < 1.2:
        last_renewal = time.monotonic()
        await a.renew([claim])
        assert await b.claim(1, wait_s=0) == []
        await asyncio.sleep(0.05)
    (taken,) = await async_wait_for(lambda: b.claim(1, wait_s=0), "the job to be claimed again")  # a went silent
    assert time.monotonic() - last_renewal >= 0.3  # not before the lease ran out
    assert taken.attempt == 2 and taken.request == claim.request and taken.request.image == IMAGE


async def test_two_racing_deliveries_store_exactly_one_result(queues: Queues) -> None:
    a, b = queues("a", lease_s=0.2), queues("b", lease_s=0.2)
    assert await b.claim(1, wait_s=0) == []  # no group yet: nothing to reclaim, and the read makes the group
    await a.submit(request("a" * 32), idempotency_key=None)
    (slow,) = await a.claim(1)
    (taken,) = await async_wait_for(lambda: b.claim(1, wait_s=0), "the job to be claimed again")
    assert await b.finish(taken, "success", {"status": "success", "by": "b"})
    assert not await a.finish(slow, "success", {"status": "success", "by": "a"})  # too late: b's result stays
    await a.settle(slow)
    await b.settle(taken)
    job = await a.get("a" * 32)
    assert job is not None and job.result == {"status": "success", "by": "b"}
    assert integer(queues.command("XLEN", STREAM)) == 0


async def test_a_crash_loop_ends_in_a_dead_letter_after_max_attempts(queues: Queues) -> None:
    """Each worker "crashes" on the job: it stops (its tasks cancelled) without storing anything or acking,
    as a SIGKILLed replica would. max_attempts 2: the third delivery ends the job with an error, unrun."""
    started: list[str] = []

    async def hangs(job: JobRequest, deadline: float) -> dict[str, Any]:
        started.append(job.job_id)
        await asyncio.Event().wait()  # never returns: the crash comes first
        raise AssertionError("unreachable")

    submitter = queues("api")
    await submitter.start()
    await submitter.submit(request("a" * 32), idempotency_key=None)
    metrics = Metrics()
    for attempt in (1, 2):
        worker = JobWorker(queues(f"w{attempt}"), hangs, metrics=metrics, capacity=4, request_timeout_s=30,
                           lease_s=0.3)  # fmt: skip
        worker.start()
        await async_wait_for(lambda n=attempt: len(started) >= n, "the next attempt to start")
        await worker.close(0)  # the crash: nothing stored, nothing acked
    last = JobWorker(queues("w3"), hangs, metrics=metrics, capacity=4, request_timeout_s=30, lease_s=0.3)
    last.start()
    job = await async_wait_for(lambda: _ended(submitter, "a" * 32), "the job to end")
    await last.close(5)
    assert started == ["a" * 32, "a" * 32]  # the third delivery did not run it
    assert job.status == "error" and job.result["error"]["code"] == "model_error"
    assert "jobs.max_attempts" in job.result["error"]["message"]
    assert metric_value(_exposition(metrics), "captioner_job_dead_letters_total") == 1
    assert metric_value(_exposition(metrics), "captioner_job_retries_total") == 2  # deliveries 2 and 3
    assert integer(queues.command("EXISTS", IMAGE_PREFIX + "a" * 32)) == 0
    assert integer(queues.command("XLEN", STREAM)) == 0


async def test_a_transient_failure_is_retried_and_the_last_attempt_keeps_its_error(queues: Queues) -> None:
    calls: list[int] = []

    async def flaky(job: JobRequest, deadline: float) -> dict[str, Any]:
        calls.append(1)
        if job.job_id.startswith("a") and len(calls) == 1:
            raise ModelError()  # e.g. the model's child process died: another try may well work
        if job.job_id.startswith("b"):
            raise ModelError()
        return {"status": "success", "captions": []}

    metrics = Metrics()
    queue = queues("w", lease_s=0.2, max_attempts=2)
    await queue.start()
    worker = JobWorker(queue, flaky, metrics=metrics, capacity=4, request_timeout_s=30, lease_s=0.2)
    worker.start()
    await queue.submit(request("a" * 32), idempotency_key=None)
    assert (await async_wait_for(lambda: _ended(queue, "a" * 32), "the job to end")).status == "success"
    await queue.submit(request("b" * 32), idempotency_key=None)
    failed = await async_wait_for(lambda: _ended(queue, "b" * 32), "the job to end")
    await worker.close(5)
    assert failed.status == "error" and failed.result["error"]["code"] == "model_error"
    text = _exposition(metrics)
    assert metric_value(text, "captioner_job_retries_total") == 2  # a's and b's second deliveries
    assert metric_value(text, "captioner_job_dead_letters_total") == 1  # b
    assert metric_value(text, "captioner_jobs_total", 'status="success"') == 1


async def test_stats_report_length_pending_and_the_oldest_pending_age(queues: Queues) -> None:
    queue = queues("a")
    await queue.start()
    for n in "123":
        await queue.submit(request(n * 32), idempotency_key=None)
    await queue.claim(2)
    await asyncio.sleep(0.05)
    stats = await queue.stats()
    assert (stats.length, stats.pending) == (3, 2)
    assert 0.05 <= stats.oldest_pending_s < 60


async def test_consumers_of_replicas_long_gone_are_forgotten_but_not_those_holding_jobs(queues: Queues) -> None:
    gone, holding, me = queues("gone"), queues("holding"), queues("me")
    await me.start()
    await me.submit(request("a" * 32), idempotency_key=None)
    await me.submit(request("b" * 32), idempotency_key=None)
    (done,) = await gone.claim(1)
    await gone.finish(done, "success", {"status": "success"})
    await gone.settle(done)  # "gone" ran a job and holds nothing now
    assert len(await holding.claim(1)) == 1  # "holding" has a job pending
    await asyncio.sleep(0.3)
    assert await me.stream.forget_idle_consumers(0.2) == 1
    names = queues.command("XINFO", "CONSUMERS", STREAM, GROUP)
    assert "holding" in names and "gone" not in names


async def _ended(queue: DurableJobQueue, job_id: str) -> Any:
    job = await queue.get(job_id)
    return job if job is not None and job.status != "processing" else None


def _exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()
