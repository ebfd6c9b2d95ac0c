"""Redis Sentinel for the state store (the fleet's contract: ``redis+sentinel://host:port[,host:port]/<service>/<db>``),
with real processes: a master, its replica and one Sentinel (quorum 1). The durable job queue is given the
sentinel URL only; jobs go in, the master is SIGKILLed, Sentinel promotes the replica, and the same queue object
takes new jobs on the new master without being told anything; a worker on the same URL runs every job, those
replicated before the failover and those submitted after it, to ``success``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from captioner.errors import Overloaded
from captioner.jobs.durable_queue import DurableJobQueue
from captioner.jobs.queue import JobRequest
from captioner.jobs.worker import JobWorker
from captioner.observability.metrics import Metrics
from captioner.shared_state.job_stream import STREAM, RedisJobStream
from captioner.shared_state.redis_client import RedisClient
from tests.support.redis import RedisSentinel, RedisServer

pytestmark = pytest.mark.anyio

SERVICE = "captioner-state"


def make_queue(url: str, consumer: str) -> DurableJobQueue:
    client = RedisClient(url, name="jobs", timeout_s=1.0)
    blocking = RedisClient(url, name="jobs-consumer", timeout_s=1.5)
    stream = RedisJobStream(client, blocking, consumer=consumer, max_length=1000, ttl_s=600, lease_s=2.0,
                            block_s=0.05)  # fmt: skip
    return DurableJobQueue(stream, ttl_s=600, lease_s=2.0, max_attempts=3)


def request(n: int) -> JobRequest:
    return JobRequest(f"{n:032x}", None, 1, image=f"image {n}".encode())


def wait_for(condition: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


async def test_the_queue_follows_a_sentinel_failover_and_loses_no_replicated_job(tmp_path: Path) -> None:
    (tmp_path / "master").mkdir()
    (tmp_path / "replica").mkdir()
    (tmp_path / "sentinel").mkdir()
    master = RedisServer(tmp_path / "master").start()
    replica = RedisServer(tmp_path / "replica", extra_args=["--replicaof", "127.0.0.1", str(master.port)]).start()
    sentinel = RedisSentinel(tmp_path / "sentinel", service=SERVICE, master_port=master.port).__enter__()
    ask = redis.Redis(port=sentinel.port)
    queue = make_queue(f"redis+sentinel://127.0.0.1:{sentinel.port}/{SERVICE}/0", "api")
    worker_queue = make_queue(f"redis+sentinel://127.0.0.1:{sentinel.port}/{SERVICE}/0", "worker")
    try:
        to_replica = redis.Redis(port=replica.port)
        wait_for(lambda: to_replica.info("replication").get("master_link_status") == "up", "the replica to sync")
        wait_for(lambda: len(ask.execute_command("SENTINEL", "REPLICAS", SERVICE)) == 1, "sentinel to see the replica")

        await queue.start()
        before = [(await queue.submit(request(n), idempotency_key=None)).job.job_id for n in range(10)]
        to_master = redis.Redis(port=master.port)
        assert to_master.execute_command("WAIT", 1, 5000) == 1  # replicated (Redis replication is asynchronous)
        assert to_master.xlen(STREAM) == 10

        master.kill()
        killed_at = time.monotonic()
        wait_for(lambda: int(ask.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1]) == replica.port,
                 "the replica's promotion")  # fmt: skip
        promoted_s = time.monotonic() - killed_at

        # The same queue object, told nothing: its next connections ask Sentinel, and reach the new master.
        after: list[str] = []
        deadline = time.monotonic() + 30
        n = 100
        while len(after) < 5 and time.monotonic() < deadline:
            try:
                after.append((await queue.submit(request(n), idempotency_key=None)).job.job_id)
                n += 1
            except Overloaded:  # the breaker's backoff after the master's death: the client retries
                await asyncio.sleep(0.1)
        assert len(after) == 5, "no job was accepted after the failover"
        assert to_replica.xlen(STREAM) == 15  # on the promoted replica: the replicated ten and the new five

        async def run(job: JobRequest, deadline: float) -> dict[str, Any]:
            return {"status": "success", "captions": [], "cached": False, "image_sha256": job.job_id * 2}

        worker = JobWorker(worker_queue, run, metrics=Metrics(), capacity=8, request_timeout_s=30, lease_s=2.0)
        worker.start()
        for job_id in before + after:
            for _ in range(600):
                job = await queue.get(job_id)
                if job is not None and job.status != "processing":
                    break
                await asyncio.sleep(0.05)
            assert job is not None and job.status == "success", (job_id, job)
        await worker.close(5)
        print(f"\nreplica promoted {promoted_s:.1f} s after the master's SIGKILL; 10 jobs from before and 5 from "
              f"after the failover all ended success")  # fmt: skip
    finally:
        await queue.aclose()
        await worker_queue.aclose()
        ask.close()
        sentinel.__exit__()
        replica.stop()
        master.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
