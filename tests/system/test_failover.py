"""Failover through the real nginx: two ``python -m captioner serve`` processes (tiny model) behind
deploy/nginx.conf on loopback, steady load from a few client threads, then SIGKILL one server mid-load.

Every client request must succeed (nginx replays requests the dead replica had taken, and routes around it),
and from the kill on, every response must come from the survivor. Which replica answered is read from
nginx's own access log (its ``upstream`` field, joined on our X-Request-ID), and checked against the
survivor's request counter.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import photo
from tests.system.nginx_proc import Nginx
from tests.system.serverproc import ServerProcess

CLIENTS = 4
# Phases are counted in answered requests, not seconds, so a slow or busy machine only makes the test longer.
ANSWERED_BEFORE_KILL = 12
ANSWERED_AFTER_KILL = 12
PHASE_TIMEOUT_S = 90.0


@dataclass
class Sent:
    request_id: str
    started: float
    status: int | None  # None: a transport error (the client saw no HTTP answer at all)
    error: str = ""


@pytest.fixture(scope="module")
def replicas(tiny_model_dir: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    # Greedy, short captions: the test is about routing, so each request's model work is kept small.
    env = {
        "CAPTIONER_BATCHING__MAX_WAIT_MS": "10",
        "CAPTIONER_SERVER__DRAIN_TIMEOUT_S": "5",
        "CAPTIONER_GENERATION__NUM_BEAMS": "1",
        "CAPTIONER_GENERATION__MIN_LENGTH": "1",
        "CAPTIONER_GENERATION__MAX_LENGTH": "8",
    }
    first, second = ServerProcess(tiny_model_dir, env=env), ServerProcess(tiny_model_dir, env=env)
    # Start both before waiting for either: the model loads overlap.
    with ThreadPoolExecutor(2) as pool:
        started = [pool.submit(server.__enter__) for server in (first, second)]
        for future in started:
            future.result()
    try:
        yield first, second
    finally:
        for server in (first, second):
            server.__exit__(None, None, None)


def test_sigkill_of_one_replica_under_load_fails_no_client_request(
    replicas: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    victim, survivor = replicas
    with Nginx(tmp_path, upstream_ports=[victim.port, survivor.port]) as nginx:
        sent: list[Sent] = []
        lock = threading.Lock()
        stop = threading.Event()
        seeds = iter(range(10_000, 1_000_000))

        def client() -> None:
            with httpx.Client(base_url=nginx.url, timeout=30) as http:
                while not stop.is_set():
                    with lock:
                        seed = next(seeds)
                    request_id = uuid.uuid4().hex
                    record = Sent(request_id, time.monotonic(), None)
                    try:
                        # A new image every time: each request is real model work, so some are in flight at the kill.
                        response = http.post(
                            "/api/v1/caption",
                            content=photo(seed, size=(64, 48)),
                            headers={"Content-Type": "image/png", "X-Request-ID": request_id},
                        )
                        record.status = response.status_code
                        if response.status_code != 200:
                            record.error = response.text[:200]
                        assert response.headers["x-request-id"] == request_id  # passed through both ways
                    except (httpx.HTTPError, AssertionError) as exc:
                        record.error = repr(exc)
                    with lock:
                        sent.append(record)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        victim_addr, survivor_addr = f"127.0.0.1:{victim.port}", f"127.0.0.1:{survivor.port}"

        def served_by_both() -> bool:
            return {str(e["upstream"]) for e in nginx.access_log()} >= {victim_addr, survivor_addr}

        _wait_until(lambda: len(sent) >= ANSWERED_BEFORE_KILL and served_by_both(), "load before the kill")
        survivor_before = _requests_total(survivor)
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()

        def answered_after_kill() -> int:
            with lock:
                return sum(s.started >= killed_at for s in sent)

        _wait_until(lambda: answered_after_kill() >= ANSWERED_AFTER_KILL, "load after the kill")
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert victim.process is not None and victim.process.wait(timeout=10) == -signal.SIGKILL

        failed = [s for s in sent if s.status != 200]
        assert not failed, f"{len(failed)} of {len(sent)} client requests failed: {failed[:5]}"
        before = [s for s in sent if s.started < killed_at]
        after = [s for s in sent if s.started >= killed_at]
        assert len(before) >= ANSWERED_BEFORE_KILL and len(after) >= ANSWERED_AFTER_KILL

        log = {entry["request_id"]: entry for entry in nginx.access_log()}
        assert all(s.request_id in log for s in sent)

        def final_upstream(s: Sent) -> str:
            return str(log[s.request_id]["upstream"]).split(", ")[-1]

        # Before the kill both replicas took work (least_conn spreads it)...
        assert {final_upstream(s) for s in before} == {victim_addr, survivor_addr}
        # ...after it, everything was answered by the survivor,
        assert {final_upstream(s) for s in after} == {survivor_addr}
        # and nginx really did fail over: some requests were tried on the dead replica first, then replayed.
        replayed = [s for s in sent if log[s.request_id]["upstream"] == f"{victim_addr}, {survivor_addr}"]
        assert replayed, "no request was retried on the survivor"
        # The survivor's own count agrees: it answered at least every request sent after the kill.
        survivor_after = _requests_total(survivor)
        assert survivor_after - survivor_before >= len(after)


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _requests_total(server: ServerProcess) -> float:
    """captioner_requests_total summed over its status labels."""
    text = httpx.get(server.url + "/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("captioner_requests_total{"))
