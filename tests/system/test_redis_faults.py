"""Redis faults lose and duplicate nothing (issue 21, item 3), against a real redis-server:

- an enqueue whose answer is lost after its script ran (a timeout at the wrong moment) makes one job, and its
  submitter gets that job, not a 503; when every try's answer is lost, the client's retry with the same
  Idempotency-Key finds the job;
- Redis started with ``--appendonly yes --appendfsync always``, SIGKILLed while jobs are being submitted and
  restarted on the same port and folder: every job whose submission was accepted is still there, records, images
  and deliveries in flight included, and runs to ``success``; a relayed request waiting on a job through the
  restart gets its result, not a 503. Without persistence the same test fails (the jobs are gone: 404).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from captioner.errors import Overloaded
from captioner.jobs.durable_queue import DurableJobQueue
from captioner.jobs.manager import JobManager
from captioner.jobs.queue import JobRequest
from captioner.jobs.worker import JobWorker
from captioner.observability.metrics import Metrics
from captioner.shared_state.job_stream import GROUP, IMAGE_PREFIX, RECORD_PREFIX, STREAM, Enqueued, RedisJobStream
from captioner.shared_state.redis_client import RedisClient, RedisUnavailable
from tests.support.redis import RedisServer

pytestmark = pytest.mark.anyio

SUCCESS = {"status": "success", "captions": [], "cached": False, "image_sha256": "0" * 64}


class LosingStream(RedisJobStream):
    """The real stream, except that the first ``lose`` enqueue answers are lost after the script ran."""

    lose = 0

    async def enqueue(self, job_id: str, **kwargs: Any) -> Enqueued | None:
        enqueued = await super().enqueue(job_id, **kwargs)
        if self.lose > 0:
            self.lose -= 1
            raise RedisUnavailable("jobs: redis enqueue failed: TimeoutError() (the answer was lost)")
        return enqueued


def make_queue(url: str, consumer: str, *, lease_s: float = 30.0, lose: int = 0) -> DurableJobQueue:
    client = RedisClient(url, name="jobs", timeout_s=1.0)
    blocking = RedisClient(url, name="jobs-consumer", timeout_s=1.5)
    stream = LosingStream(client, blocking, consumer=consumer, max_length=1000, ttl_s=600, lease_s=lease_s,
                          block_s=0.05)  # fmt: skip
    stream.lose = lose
    return DurableJobQueue(stream, ttl_s=600, lease_s=lease_s, max_attempts=3)


def request(n: int) -> JobRequest:
    return JobRequest(f"{n:032x}", "key:alpha", 1, image=f"image {n}".encode())


@pytest.fixture
def plain_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, redis.Redis]]:
    with RedisServer(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        yield server, client
        client.close()


async def test_an_enqueue_whose_answer_was_lost_makes_one_job_and_its_submitter_gets_it(
    plain_redis: tuple[RedisServer, redis.Redis],
) -> None:
    server, client = plain_redis
    queue = make_queue(server.url, "api", lose=1)
    try:
        await queue.start()
        submitted = await queue.submit(request(1), idempotency_key=None)  # no key: only the retry can save it
        assert submitted.job.job_id == request(1).job_id and not submitted.replayed
        assert client.xlen(STREAM) == 1  # the retry found the first try's job; it did not add another
        job = await queue.get(request(1).job_id)
        assert job is not None and job.status == "processing"
    finally:
        await queue.aclose()


async def test_when_every_answer_is_lost_a_retry_with_the_same_idempotency_key_finds_the_job(
    plain_redis: tuple[RedisServer, redis.Redis],
) -> None:
    server, client = plain_redis
    queue = make_queue(server.url, "api", lose=10)
    try:
        await queue.start()
        with pytest.raises(Overloaded):  # 503: the queue can't say whether the job exists
            await queue.submit(request(1), idempotency_key="client-key-1")
        assert client.xlen(STREAM) == 1  # it does: every try after the first found it (one job, not three)
        queue.stream.lose = 0  # type: ignore[attr-defined]
        # The client retries the same request with the same key (a new request, so a new job id, same body).
        retry = JobRequest("f" * 32, "key:alpha", 1, image=request(1).image)
        again = await queue.submit(retry, idempotency_key="client-key-1")
        assert again.replayed and again.job.job_id == request(1).job_id
        assert client.xlen(STREAM) == 1
    finally:
        await queue.aclose()


async def test_a_redis_restart_with_aof_loses_no_accepted_job_and_a_waiting_relay_gets_its_result(
    tmp_path: Path,
) -> None:
    with RedisServer(tmp_path, appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        api = make_queue(server.url, "api")
        crashed = make_queue(server.url, "crashed-worker", lease_s=1.0)
        survivor = make_queue(server.url, "survivor", lease_s=1.0)
        manager = JobManager(api, ttl_s=600, metrics=Metrics())
        try:
            await api.start()
            accepted: list[str] = []
            for n in range(20):
                accepted.append((await api.submit(request(n), idempotency_key=None)).job.job_id)
            # A worker holds 5 jobs when Redis dies (and dies with it: it never finishes them).
            held = await crashed.claim(5)
            assert len(held) == 5
            # A relayed sync request waits on a job that is still queued.
            waited = accepted[10]
            waiter = asyncio.ensure_future(manager.wait(waited, principal="key:alpha", deadline=time.monotonic() + 60))

            # Submissions keep coming while Redis is SIGKILLed and restarted.
            stop = asyncio.Event()

            async def submit_meanwhile() -> None:
                n = 100
                while not stop.is_set():
                    n += 1
                    with contextlib.suppress(Overloaded):  # refused: its client was told so (503), and retries
                        accepted.append((await api.submit(request(n), idempotency_key=None)).job.job_id)
                    await asyncio.sleep(0.01)

            submitter = asyncio.ensure_future(submit_meanwhile())
            await asyncio.sleep(0.3)
            before = len(accepted)
            server.kill()
            await asyncio.sleep(0.5)
            server.start()  # the same port and folder: the AOF is replayed
            restarted_at = time.monotonic()
            while len(accepted) < before + 5 and time.monotonic() - restarted_at < 30:
                await asyncio.sleep(0.05)  # until the queue takes submissions again
            stop.set()
            await submitter
            assert len(accepted) >= before + 5, "no submission was accepted after the restart"

            # Everything accepted is in Redis: record, image, stream entry; the dead worker's deliveries pending.
            assert client.xlen(STREAM) == len(accepted), (client.xlen(STREAM), len(accepted))
            for job_id in accepted:
                assert client.exists(RECORD_PREFIX + job_id) and client.exists(IMAGE_PREFIX + job_id), job_id
            assert client.xpending(STREAM, GROUP)["pending"] == 5
            assert not waiter.done()  # the relay is still waiting: no 503 for a job that is still queued

            async def run(job: JobRequest, deadline: float) -> dict[str, Any]:
                return {**SUCCESS, "image_sha256": job.job_id * 2}

            worker = JobWorker(survivor, run, metrics=Metrics(), capacity=8, request_timeout_s=30, lease_s=1.0)
            worker.start()
            ended = await asyncio.wait_for(waiter, 60)
            assert ended.status == "success" and ended.result is not None
            deadline = time.monotonic() + 60
            while (client.xlen(STREAM) or client.xpending(STREAM, GROUP)["pending"]) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await worker.close(5)
            for job_id in accepted:
                job = await api.get(job_id)
                assert job is not None and job.status == "success", (job_id, job)
            assert {claim.request.job_id for claim in held} <= set(accepted)  # the dead worker's jobs ran too
            print(f"\n{len(accepted)} jobs accepted ({before} before the SIGKILL), all present after the restart and "
                  f"all ended success; the waiting relay got its result")  # fmt: skip
        finally:
            client.close()
            for queue in (api, crashed, survivor):
                await queue.aclose()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
