"""A worker whose model is down neither claims jobs nor spends their attempts (issue 21, item 1), with a real
redis-server:

- the queue's side: a released job is a new stream entry at once (no lease to wait out), the old one gone, its
  attempt number unchanged and its lost-batch count carried; a release that comes after another replica took the
  job over adds nothing;
- end to end: two ``captioner serve`` replicas on one queue; one replica's model process is SIGKILLed while it
  holds jobs and stays down (respawn backoff 60 s). Every job ends ``success``: the broken replica hands back
  what it held and claims nothing more, the healthy one runs it all; no dead letter, no error.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from captioner.jobs.durable_queue import DurableJobQueue
from captioner.jobs.queue import JobRequest
from captioner.shared_state.job_stream import GROUP, STREAM, RedisJobStream
from captioner.shared_state.redis_client import RedisClient
from tests.support.images import photo
from tests.support.processes import ServerProcess, model_child_pid
from tests.support.redis import RedisServer

CAPTION = "/api/v1/caption"
JOBS = 120


def queue(redis_url: str, consumer: str, *, lease_s: float = 30.0, max_attempts: int = 3) -> DurableJobQueue:
    client = RedisClient(redis_url, name="jobs", timeout_s=2.0)
    blocking = RedisClient(redis_url, name="jobs-consumer", timeout_s=2.5)
    stream = RedisJobStream(client, blocking, consumer=consumer, max_length=100, ttl_s=60, lease_s=lease_s,
                            block_s=0.05)  # fmt: skip
    return DurableJobQueue(stream, ttl_s=60, lease_s=lease_s, max_attempts=max_attempts)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with RedisServer(tmp_path) as server:
        yield server.url


@pytest.mark.anyio
async def test_a_released_job_is_claimable_at_once_with_its_attempt_unused(redis_url: str) -> None:
    a, b = queue(redis_url, "a"), queue(redis_url, "b")
    plain = redis.Redis.from_url(redis_url)
    try:
        await a.start()
        job = JobRequest("a" * 32, "key:alpha", 1, image=b"image", deadline=time.time() + 60)
        await a.submit(job, idempotency_key=None)
        (first,) = await a.claim(5)
        assert (first.attempt, first.lost) == (1, 0)
        await a.release(first, lost=True)  # e.g. its batch died with a's model process
        # The lease is 30 s: only a new, undelivered entry can reach b this soon.
        (second,) = await b.claim(5, wait_s=0)
        assert second.request == job and second.request.image == b"image"
        assert (second.attempt, second.lost) == (1, 1)  # the attempt was not used; the lost batch is counted
        assert second.token != first.token and plain.xlen(STREAM) == 1  # one entry per job, always
        assert plain.xpending(STREAM, GROUP)["pending"] == 1
        # A release by a consumer that no longer holds the entry (b has it now) changes nothing.
        await a.release(first, lost=False)
        assert plain.xlen(STREAM) == 1 and await a.claim(5, wait_s=0) == []
        # Attempts that were used stay used: b fails it for real (left to its lease), then hands it back.
        await b.release(second, lost=False)
        (third,) = await a.claim(5, wait_s=0)
        assert (third.attempt, third.lost) == (1, 1)
    finally:
        plain.close()
        await a.aclose()
        await b.aclose()


def test_a_replica_whose_model_dies_hands_its_jobs_to_the_healthy_one_and_none_fails(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with RedisServer(tmp_path) as redis_server:
        client = redis.Redis.from_url(redis_server.url)
        env = {
            "CAPTIONER_JOBS__QUEUE": "redis",
            "CAPTIONER_JOBS__REDIS_URL": redis_server.url,
            "CAPTIONER_JOBS__LEASE_S": "2",
            "CAPTIONER_MODEL__WORKER": "process",
            # Down for the rest of the test once killed: the measurement (80 of 100 jobs succeeded).
            "CAPTIONER_HEALTH__RESPAWN_BACKOFF_S": "60",
            "CAPTIONER_HEALTH__RESPAWN_MAX_BACKOFF_S": "60",
            # Captions of exactly 16 tokens, greedy: batches long enough for the kill to land mid-run.
            "CAPTIONER_GENERATION__NUM_BEAMS": "1",
            "CAPTIONER_GENERATION__MIN_LENGTH": "16",
            "CAPTIONER_GENERATION__MAX_LENGTH": "16",
            "CAPTIONER_BATCHING__MAX_BATCH_SIZE": "8",
            "CAPTIONER_BATCHING__MAX_WAIT_MS": "20",
        }
        broken, healthy = ServerProcess(tiny_model_dir, env=env), ServerProcess(tiny_model_dir, env=env)
        with ThreadPoolExecutor(2) as pool:  # start both before waiting for either: the loads overlap
            for started in [pool.submit(server.__enter__) for server in (broken, healthy)]:
                started.result()
        try:
            images = [photo(2000 + n) for n in range(JOBS)]
            with httpx.Client(timeout=30) as http, ThreadPoolExecutor(8) as pool:
                responses = list(pool.map(
                    lambda n: http.post(f"{(broken, healthy)[n % 2].url}{CAPTION}?mode=async", content=images[n],
                                        headers={"Content-Type": "image/png"}),
                    range(JOBS),
                ))  # fmt: skip
            refused = [r.text for r in responses if r.status_code != 202]
            assert not refused, refused
            jobs = [r.json()["job_id"] for r in responses]
            held = _wait_until_holding(client, f"-{broken.pid}-", at_least=4)
            os.kill(model_child_pid(broken.pid), signal.SIGKILL)
            killed_at = time.monotonic()
            results = {job_id: _ended(healthy.url, job_id) for job_id in jobs}
            drained_s = time.monotonic() - killed_at
            failed = [r for r in results.values() if r["status"] != "success"]
            assert not failed, f"{len(failed)} of {JOBS} jobs failed: {failed[:3]}"
            assert httpx.get(broken.url + "/readyz", timeout=5).status_code == 503  # still down: backoff 60 s
            for server in (broken, healthy):
                assert server.metric("captioner_job_dead_letters_total") == 0
                assert server.metric("captioner_jobs_total", 'status="error"') == 0
            released = broken.metric("captioner_job_releases_total")
            assert released >= 1  # it held jobs when its model died, and handed them back
            assert broken.metric("captioner_job_claims_paused") == 1
            by_broken = broken.metric("captioner_jobs_total", 'status="success"')
            by_healthy = healthy.metric("captioner_jobs_total", 'status="success"')
            assert by_broken + by_healthy == JOBS  # exactly one result per job
            print(f"\n{JOBS} jobs, all success: the broken replica held {held} at the kill, finished {by_broken:.0f} "
                  f"before it, handed back {released:.0f}; the healthy one finished {by_healthy:.0f}; the queue "
                  f"drained {drained_s:.1f} s after the kill")  # fmt: skip
        finally:
            for server in (broken, healthy):
                server.__exit__(None, None, None)
            client.close()


def _ended(url: str, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = httpx.get(f"{url}{CAPTION}/{job_id}", timeout=10)
        assert response.status_code == 200, response.text
        if response.json()["status"] != "processing":
            return response.json()  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end")


def _wait_until_holding(client: redis.Redis, consumer_part: str, *, at_least: int, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        summary = client.xpending(STREAM, GROUP)
        held = sum(c["pending"] for c in summary["consumers"] if consumer_part in c["name"].decode())
        if held >= at_least:
            return int(held)
        time.sleep(0.01)
    raise AssertionError("the replica never held enough jobs")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
