"""Async jobs on a real redis-server shared by two replicas: a job created on one is readable on the other."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.images import photo
from tests.support.jobs import job_result, submit_job
from tests.support.model import tiny_settings
from tests.support.redis import RedisServer
from tests.support.servers import LiveServer, replicas

CAPTION = "/api/v1/caption"


def test_a_job_created_on_replica_a_is_readable_on_replica_b(tiny_model_dir: Path, tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis:
        settings = tiny_settings(tiny_model_dir, cache={"redis_url": redis.url})
        with replicas(LiveServer(settings), LiveServer(settings)) as (a, b):
            accepted = submit_job(a, photo(601))
            assert accepted.status_code == 202
            job_id = accepted.json()["job_id"]
            on_a = job_result(a, job_id)
            on_b = job_result(b, job_id)
            assert on_b.status_code == 200, on_b.text
            assert on_b.json() == on_a.json() and on_b.json()["status"] == "success"
            ttl_s = int(redis.command("TTL", f"captioner:job:v1:{job_id}").strip()[1:])
            assert 3500 < ttl_s <= 3600
            # Redis down: new jobs are refused with a retryable 503 (no other replica could report them),
            # while replica A still answers for the job it ran.
            redis.kill()
            refused = submit_job(a, photo(602))
            assert refused.status_code == 503 and "retry-after" in refused.headers
            assert refused.json()["error"]["code"] == "overloaded"
            assert job_result(a, job_id).json()["status"] == "success"
            unknown = httpx.get(f"{b.url}{CAPTION}/{job_id}")
            assert unknown.status_code == 503  # not a misleading 404: B can't know
            assert a.metric("captioner_job_store_errors_total", 'operation="set"') >= 1
            # Sync captioning is unaffected by the job store being down.
            sync = httpx.post(a.url + CAPTION, content=photo(603), headers={"Content-Type": "image/png"}, timeout=30)
            assert sync.status_code == 200
