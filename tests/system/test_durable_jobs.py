"""Durable jobs end to end: real redis-server, real ``python -m captioner serve`` processes, the tiny BLIP.

- an ``api``-role replica (no model) and a ``worker``-role replica caption jobs together; sync requests to the
  api replica are relayed through the queue; Idempotency-Key; signed, retried callbacks; image bytes leaving
  Redis with their job;
- 200 jobs over two replicas, one SIGKILLed while it holds jobs: every job ends ``success`` exactly once.
"""

from __future__ import annotations

import base64
import hashlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from captioner.shared_state.job_stream import GROUP, IMAGE_PREFIX, RECORD_PREFIX, STREAM
from tests.support.images import photo
from tests.support.processes import ServerProcess
from tests.support.receiver import Receiver
from tests.support.redis import RedisServer
from tests.support.waits import wait_for

CAPTION = "/api/v1/caption"
SECRET = "test-callback-secret"
ALPHA = {"Authorization": "Bearer alpha-key"}
BETA = {"Authorization": "Bearer beta-key"}


def queue_env(redis_url: str, **extra: str) -> dict[str, str]:
    """A redis job queue with a short lease, and a quick tiny model (greedy, short captions)."""
    return {
        "CAPTIONER_JOBS__QUEUE": "redis",
        "CAPTIONER_JOBS__REDIS_URL": redis_url,
        "CAPTIONER_JOBS__LEASE_S": "2",
        "CAPTIONER_GENERATION__NUM_BEAMS": "1",
        "CAPTIONER_GENERATION__MIN_LENGTH": "1",
        "CAPTIONER_GENERATION__MAX_LENGTH": "8",
        "CAPTIONER_BATCHING__MAX_BATCH_SIZE": "8",
        "CAPTIONER_BATCHING__MAX_WAIT_MS": "20",
        **extra,
    }


def submit(url: str, data: bytes, headers: dict[str, str] | None = None, **params: str) -> httpx.Response:
    query = "&".join(["mode=async", *(f"{k}={v}" for k, v in params.items())])
    return httpx.post(f"{url}{CAPTION}?{query}", content=data, headers={"Content-Type": "image/png", **(headers or {})},
                      timeout=30)  # fmt: skip


def ended(url: str, job_id: str, headers: dict[str, str] | None = None, timeout_s: float = 120) -> dict[str, Any]:
    def body() -> dict[str, Any] | None:
        response = httpx.get(f"{url}{CAPTION}/{job_id}", headers=headers or {}, timeout=10)
        assert response.status_code == 200, response.text
        return None if response.json()["status"] == "processing" else response.json()

    return wait_for(body, f"job {job_id} to end", timeout_s)


def consumer_of(pid: int) -> str:
    """The consumer-name prefix a replica uses in the group (see jobs/manager.py)."""
    return f"{socket.gethostname()}-{pid}-"


# --- an api replica and a worker replica -------------------------------------------------------------------


@pytest.fixture(scope="module")
def split(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Any, Any]]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        env = queue_env(
            server.url,
            CAPTIONER_AUTH__API_KEYS="[alpha-key, beta-key]",
            CAPTIONER_JOBS__CALLBACK_SECRET=SECRET,
            CAPTIONER_URL_INPUT__ALLOW_PRIVATE_NETWORKS="true",  # the callback receiver is on 127.0.0.1
        )
        api = ServerProcess(tiny_model_dir, env=env, args=["--role", "api"])
        with api, ServerProcess(tiny_model_dir, env=env, args=["--role", "worker"]) as worker:
            yield server, api, worker


def test_the_api_replica_loads_no_model_and_the_worker_serves_only_probes_and_metrics(split: Any) -> None:
    _, api, worker = split
    assert httpx.get(api.url + "/readyz").json() == {"status": "ready", "role": "api"}
    api_metrics = httpx.get(api.url + "/metrics").text
    assert "captioner_model_info{" not in api_metrics and "captioner_queue_depth{" not in api_metrics  # no model
    assert api.metric("captioner_ready") == 1
    assert httpx.get(worker.url + "/readyz").json() == {"status": "ready", "role": "worker"}
    assert worker.metric("captioner_model_info", 'name="test/tiny-blip"') == 1
    assert httpx.get(worker.url + "/healthz").status_code == 200
    for method, path in (("POST", CAPTION), ("GET", "/openapi.json"), ("GET", "/")):
        assert httpx.request(method, worker.url + path, headers=ALPHA).status_code == 404


def mapped_libraries(pid: int) -> set[str]:
    """The file names of the shared objects a live process has mapped (/proc/<pid>/maps, Linux)."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {Path(line.split()[-1]).name for line in lines if ".so" in line.split()[-1]}


def test_the_api_replica_never_maps_libtorch(split: Any) -> None:
    """An api replica relays captions through the queue: torch (about 1 GB of libraries) has no business there."""
    _, api, worker = split
    assert httpx.post(api.url + CAPTION, content=photo(798), headers={"Content-Type": "image/png", **ALPHA},
                      timeout=60).status_code == 200  # fmt: skip  # a relayed caption: every code path has run
    assert not {name for name in mapped_libraries(api.pid) if name.startswith("libtorch")}
    assert {name for name in mapped_libraries(worker.pid) if name.startswith("libtorch")}  # the check can see it


def test_jobs_accepted_by_the_api_are_captioned_by_the_worker_like_sync_requests(split: Any) -> None:
    redis_server, api, worker = split
    images = {seed: photo(seed) for seed in range(700, 706)}
    accepted = {seed: submit(api.url, data, ALPHA) for seed, data in images.items()}
    assert all(r.status_code == 202 for r in accepted.values()), [r.text for r in accepted.values()]
    results = {seed: ended(api.url, r.json()["job_id"], ALPHA) for seed, r in accepted.items()}
    assert all(result["status"] == "success" and not result["cached"] for result in results.values())
    # A sync request to the api replica (no model) is relayed through the queue; the worker's cache answers it.
    for seed, result in results.items():
        sync = httpx.post(api.url + CAPTION, content=images[seed], headers={"Content-Type": "image/png", **ALPHA},
                          timeout=60)  # fmt: skip
        assert sync.status_code == 200, sync.text
        assert sync.json()["cached"] is True
        assert {k: v for k, v in sync.json().items() if k != "cached"} == {
            k: v for k, v in result.items() if k not in ("cached", "job_id")
        }
    fresh = httpx.post(api.url + CAPTION, content=photo(799), headers={"Content-Type": "image/png", **ALPHA},
                       timeout=60)  # fmt: skip
    assert fresh.status_code == 200 and fresh.json()["cached"] is False and fresh.json()["captions"]
    bad = httpx.post(api.url + CAPTION, content=b"\x89PNG\r\n\x1a\n broken", headers={"Content-Type": "image/png",
                     **ALPHA}, timeout=60)  # fmt: skip
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_image"  # the worker's error, relayed
    hf = httpx.post(api.url + "/", content=images[700], headers=ALPHA, timeout=60)  # Hugging Face's shape, relayed
    assert hf.status_code == 200 and hf.json() == [{"generated_text": results[700]["captions"][0]["text"]}]
    assert worker.metric("captioner_jobs_total", 'status="success"') >= len(images) + 1
    assert not redis.Redis.from_url(redis_server.url).keys(IMAGE_PREFIX + "*")  # every job's image is gone


def test_one_idempotency_key_makes_one_job_per_api_key(split: Any) -> None:
    redis_server, api, _ = split
    client = redis.Redis.from_url(redis_server.url)
    before = len(client.keys(RECORD_PREFIX + "*"))
    data = photo(710)
    first = submit(api.url, data, {**ALPHA, "Idempotency-Key": "upload-710"})
    second = submit(api.url, data, {**ALPHA, "Idempotency-Key": "upload-710"})
    other = submit(api.url, data, {**BETA, "Idempotency-Key": "upload-710"})
    assert [r.status_code for r in (first, second, other)] == [202, 202, 202]
    assert second.json()["job_id"] == first.json()["job_id"] and second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert other.json()["job_id"] != first.json()["job_id"]  # another owner: its own job
    assert len(client.keys(RECORD_PREFIX + "*")) == before + 2
    reused = submit(api.url, photo(711), {**ALPHA, "Idempotency-Key": "upload-710"})
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "invalid_request"
    assert ended(api.url, first.json()["job_id"], ALPHA)["status"] == "success"


def test_a_callback_is_signed_and_retried_after_a_500(split: Any) -> None:
    _, api, worker = split
    with Receiver([500, 200]) as receiver:
        body = {"image": base64.b64encode(photo(720)).decode(), "callback_url": receiver.url}
        accepted = httpx.post(f"{api.url}{CAPTION}?mode=async", json=body, headers=ALPHA, timeout=30)
        assert accepted.status_code == 202, accepted.text
        result = ended(api.url, accepted.json()["job_id"], ALPHA)
        deadline = time.monotonic() + 60
        while len(receiver.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(receiver.received) == 2  # the first answered 500: sent again
    for index in (0, 1):
        assert receiver.verify(index, SECRET)
        assert orjson.loads(receiver.received[index][1]) == result
    assert not receiver.verify(1, "not the secret")
    assert worker.metric("captioner_job_callbacks_total", 'outcome="delivered"') >= 1
    refused = submit(api.url, photo(721), ALPHA, callback_url="ftp://127.0.0.1/hook")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "url_not_allowed"
    sync_with_callback = httpx.post(f"{api.url}{CAPTION}", json=body, headers=ALPHA, timeout=30)
    assert sync_with_callback.status_code == 422


def test_a_role_the_queue_cannot_serve_refuses_to_start_in_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    for role in ("api", "worker"):
        result = subprocess.run(
            [sys.executable, "-m", "captioner", "serve", "--role", role], cwd=tmp_path, capture_output=True, text=True,
            env={**ServerProcess(tiny_model_dir).env, "CAPTIONER_JOBS__QUEUE": "memory"}, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"config: --role {role} needs jobs.queue: redis (api and worker replicas meet only through that queue)"
        ]


# --- a replica dies mid-run ----------------------------------------------------------------------------------


def test_200_jobs_survive_a_replica_killed_mid_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis_server:
        client = redis.Redis.from_url(redis_server.url)
        # Captions of exactly 16 tokens: each batch takes long enough for the kill to land mid-run.
        env = queue_env(redis_server.url, CAPTIONER_GENERATION__MIN_LENGTH="16", CAPTIONER_GENERATION__MAX_LENGTH="16")
        with ServerProcess(tiny_model_dir, env=env) as a, ServerProcess(tiny_model_dir, env=env) as b:
            images = [photo(1000 + n) for n in range(200)]
            started = time.monotonic()
            with httpx.Client(timeout=30) as http, ThreadPoolExecutor(8) as pool:
                responses = list(pool.map(
                    lambda n: http.post(f"{(a, b)[n % 2].url}{CAPTION}?mode=async", content=images[n],
                                        headers={"Content-Type": "image/png"}),
                    range(200),
                ))  # fmt: skip
            assert [r.status_code for r in responses] == [202] * 200, [
                r.text for r in responses if r.status_code != 202
            ]
            jobs = [r.json()["job_id"] for r in responses]
            assert len(set(jobs)) == 200
            # Kill A while it holds jobs (delivered to it, not yet ended): they must move to B.
            _wait_until_holding(client, consumer_of(a.pid), at_least=4)
            outstanding = client.xlen(STREAM)
            assert a.process is not None
            a.process.send_signal(signal.SIGKILL)
            a.process.wait(timeout=30)
            killed_at = time.monotonic()
            # What A held when it died (it kept finishing jobs until the signal landed): the entries still in its
            # name, plus any that B already claimed from it (delivered more than once; nothing else redelivers here).
            held = _held_at_death(client, consumer_of(a.pid))
            assert held >= 1
            deadline = killed_at + 600
            while (client.xlen(STREAM) or client.xpending(STREAM, GROUP)["pending"]) and time.monotonic() < deadline:
                time.sleep(0.05)
            drained_at = time.monotonic()
            first_seen = {job_id: ended(b.url, job_id) for job_id in jobs}
            assert all(result["status"] == "success" for result in first_seen.values()), [
                r for r in first_seen.values() if r["status"] != "success"
            ]
            for job_id, data in zip(jobs, images, strict=True):
                assert first_seen[job_id]["image_sha256"] == hashlib.sha256(data).hexdigest()
            # Nothing is left to run again (stream and pending list empty, every image gone), so each job's one
            # result is final: read again later, nothing has changed.
            assert client.xlen(STREAM) == 0 and client.xpending(STREAM, GROUP)["pending"] == 0
            assert not client.keys(IMAGE_PREFIX + "*")
            assert {job_id: ended(b.url, job_id) for job_id in jobs} == first_seen
            retries = b.metric("captioner_job_retries_total")
            assert retries >= held  # A's jobs were delivered again, to B, and counted
            assert b.metric("captioner_job_dead_letters_total") == 0
            by_b = b.metric("captioner_jobs_total", 'status="success"')
            print(
                f"\n200 jobs: A killed {killed_at - started:.1f} s after the first POST, holding {held} jobs, with "
                f"{outstanding} not ended; the queue was empty {drained_at - killed_at:.1f} s after the kill; B "
                f"counted {retries:.0f} retries and finished {by_b:.0f} jobs"
            )


def _held_at_death(client: redis.Redis, consumer_prefix: str) -> int:
    entries = client.xpending_range(STREAM, GROUP, min="-", max="+", count=1000)
    return sum(1 for e in entries if e["consumer"].decode().startswith(consumer_prefix) or e["times_delivered"] >= 2)


def _wait_until_holding(client: redis.Redis, consumer_prefix: str, *, at_least: int, timeout_s: float = 120) -> int:
    def held() -> int | None:
        summary = client.xpending(STREAM, GROUP)
        count = sum(c["pending"] for c in summary["consumers"] if c["name"].decode().startswith(consumer_prefix))
        return int(count) if count >= at_least else None

    return wait_for(held, "replica A to hold enough jobs", timeout_s)
