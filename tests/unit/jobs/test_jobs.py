"""Async jobs: the stores and the manager in isolation, then end to end through real HTTP with the tiny model,
in memory and in a real redis-server shared by two replicas."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from captioner.errors import InvalidImage, NotFound, Overloaded
from captioner.jobs.manager import JobManager
from captioner.jobs.queue import JobRequest, MemoryJobQueue
from captioner.jobs.records import Job, MemoryJobStore
from captioner.observability.metrics import Metrics
from tests.conftest import LiveServer, photo, tiny_settings
from tests.support.redis import RedisServer

CAPTION = "/api/v1/caption"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def job(job_id: str, status: str = "processing", expires_at: float = 2000.0) -> Job:
    return Job(job_id, status, None if status == "processing" else {"status": status}, None, expires_at)  # type: ignore[arg-type]


# --- stores and manager, no HTTP ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_memory_store_evicts_the_oldest_finished_job_and_refuses_when_all_are_running() -> None:
    store = MemoryJobStore(max_jobs=2, clock=Clock())
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
    clock = Clock()
    store = MemoryJobStore(max_jobs=10, clock=clock)
    await store.add(job("a", expires_at=clock.now + 60))
    clock.now += 59
    assert await store.get("a") is not None
    clock.now += 2
    assert await store.get("a") is None
    await store.add(job("b", expires_at=clock.now + 60))
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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- end to end --------------------------------------------------------------------------------------------


def submit(server: LiveServer, data: bytes, **kwargs: Any) -> httpx.Response:
    headers = {"Content-Type": "image/png", **kwargs.pop("headers", {})}
    return httpx.post(server.url + CAPTION + "?mode=async", content=data, headers=headers, timeout=30, **kwargs)


def wait_for(server: LiveServer, job_id: str, headers: dict[str, str] | None = None) -> httpx.Response:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = httpx.get(f"{server.url}{CAPTION}/{job_id}", headers=headers or {}, timeout=10)
        if response.status_code != 200 or response.json()["status"] != "processing":
            return response
        assert response.headers["retry-after"] == "1"
        time.sleep(0.02)
    raise AssertionError("the job did not finish")


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    with LiveServer(tiny_settings(tiny_model_dir)) as live:
        yield live


def test_async_job_returns_202_then_the_same_body_as_a_sync_call(server: LiveServer) -> None:
    data = photo(501)
    accepted = submit(server, data)
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["status"] == "processing"
    assert len(body["job_id"]) == 32
    assert isinstance(body["estimated_time_seconds"], float) and body["estimated_time_seconds"] > 0
    assert accepted.headers["location"] == f"{CAPTION}/{body['job_id']}"
    done = wait_for(server, body["job_id"])
    assert done.status_code == 200
    result = done.json()
    assert result["status"] == "success" and result["job_id"] == body["job_id"]
    assert result["image_sha256"] == hashlib.sha256(data).hexdigest()
    assert result["cached"] is False
    sync = httpx.post(server.url + CAPTION, content=data, headers={"Content-Type": "image/png"}, timeout=30).json()
    assert sync["cached"] is True  # the job's captions went into the cache
    assert {k: v for k, v in result.items() if k not in ("job_id", "cached")} == {
        k: v for k, v in sync.items() if k != "cached"
    }
    assert server.metric("captioner_jobs_total", 'status="success"') >= 1


def test_a_bad_image_fails_the_job_with_the_usual_error_body(server: LiveServer) -> None:
    accepted = submit(server, b"\x89PNG\r\n\x1a\n not really a png")
    assert accepted.status_code == 202
    done = wait_for(server, accepted.json()["job_id"])
    assert done.status_code == 200
    body = done.json()
    assert body["status"] == "error" and body["error"]["code"] == "invalid_image"
    assert body["error"]["message"]


def test_a_malformed_request_is_refused_at_once_not_as_a_job(server: LiveServer) -> None:
    response = httpx.post(
        server.url + CAPTION + "?mode=async&num_captions=99", content=photo(1), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"
    unsupported = httpx.post(server.url + CAPTION + "?mode=async", content=b"x", headers={"Content-Type": "text/plain"})
    assert unsupported.status_code == 415
    bad_mode = httpx.post(server.url + CAPTION + "?mode=later", content=photo(1), headers={"Content-Type": "image/png"})
    assert bad_mode.status_code == 422 and "mode" in bad_mode.json()["error"]["message"]


def test_unknown_job_is_a_404_json_error(server: LiveServer) -> None:
    for job_id in ("0" * 32, "not-a-job-id"):
        response = httpx.get(f"{server.url}{CAPTION}/{job_id}")
        assert response.status_code == 404
        assert response.json()["status"] == "error" and response.json()["error"]["code"] == "not_found"


def test_jobs_follow_the_api_key_rules(tiny_model_dir: Path) -> None:
    settings = tiny_settings(tiny_model_dir, auth={"api_keys": ["alpha-key", "beta-key"]})
    alpha = {"Authorization": "Bearer alpha-key"}
    beta = {"Authorization": "Bearer beta-key"}
    with LiveServer(settings) as live:
        assert submit(live, photo(7)).status_code == 401
        accepted = submit(live, photo(7), headers=alpha)
        assert accepted.status_code == 202
        job_id = accepted.json()["job_id"]
        url = f"{live.url}{CAPTION}/{job_id}"
        assert httpx.get(url).status_code == 401
        assert wait_for(live, job_id, alpha).json()["status"] == "success"
        other = httpx.get(url, headers=beta)
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"


@pytest.mark.system
def test_a_job_created_on_replica_a_is_readable_on_replica_b(tiny_model_dir: Path, tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis:
        settings = tiny_settings(tiny_model_dir, cache={"redis_url": redis.url})
        with LiveServer(settings) as a, LiveServer(settings) as b:
            accepted = submit(a, photo(601))
            assert accepted.status_code == 202
            job_id = accepted.json()["job_id"]
            on_a = wait_for(a, job_id)
            on_b = wait_for(b, job_id)
            assert on_b.status_code == 200, on_b.text
            assert on_b.json() == on_a.json() and on_b.json()["status"] == "success"
            ttl_s = int(redis.command("TTL", f"captioner:job:v1:{job_id}").strip()[1:])
            assert 3500 < ttl_s <= 3600
            # Redis down: new jobs are refused with a retryable 503 (no other replica could report them),
            # while replica A still answers for the job it ran.
            redis.kill()
            refused = submit(a, photo(602))
            assert refused.status_code == 503 and "retry-after" in refused.headers
            assert refused.json()["error"]["code"] == "overloaded"
            assert wait_for(a, job_id).json()["status"] == "success"
            unknown = httpx.get(f"{b.url}{CAPTION}/{job_id}")
            assert unknown.status_code == 503  # not a misleading 404: B can't know
            assert a.metric("captioner_job_store_errors_total", 'operation="set"') >= 1
            # Sync captioning is unaffected by the job store being down.
            sync = httpx.post(a.url + CAPTION, content=photo(603), headers={"Content-Type": "image/png"}, timeout=30)
            assert sync.status_code == 200
