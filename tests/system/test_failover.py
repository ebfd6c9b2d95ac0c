"""Failover through the real nginx: two ``python -m captioner serve`` processes (tiny model) behind
deploy/nginx.conf on loopback, steady load from a few client threads, then a failure mid-load.

- SIGKILL one server: every client request must succeed (nginx replays requests the dead replica had taken,
  which carry an Idempotency-Key as the Python client's do, and routes around it), and from the kill on, every
  response must come from the survivor.
- SIGKILL one server's model process (``model.worker: process``): once its /readyz has dropped, no client gets
  a 5xx (the replica answers 503, which nginx retries on the other one), and once the model process is
  respawned the replica takes traffic again.

Which replica answered is read from nginx's own access log (its ``upstream`` field, joined on our
X-Request-ID), and checked against the replicas' own counters.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.images import photo
from tests.support.nginx import Nginx
from tests.support.processes import ServerProcess, model_child_pid
from tests.support.servers import replicas
from tests.support.waits import wait_for

CLIENTS = 4
# Phases are counted in answered requests, not seconds, so a slow or busy machine only makes the test longer.
ANSWERED_BEFORE_KILL = 12
ANSWERED_AFTER_KILL = 12
PHASE_TIMEOUT_S = 90.0
phase = functools.partial(wait_for, timeout_s=PHASE_TIMEOUT_S)  # poll for a phase of the test


@dataclass
class Sent:
    request_id: str
    started: float
    status: int | None  # None: a transport error (the client saw no HTTP answer at all)
    error: str = ""


# Greedy, short captions: the tests are about routing, so each request's model work is kept small.
LIGHT_MODEL_ENV = {
    "CAPTIONER_BATCHING__MAX_WAIT_MS": "10",
    "CAPTIONER_SERVER__DRAIN_TIMEOUT_S": "5",
    "CAPTIONER_GENERATION__NUM_BEAMS": "1",
    "CAPTIONER_GENERATION__MIN_LENGTH": "1",
    "CAPTIONER_GENERATION__MAX_LENGTH": "8",
}


@pytest.fixture(scope="module")
def pair(tiny_model_dir: Path) -> Iterator[tuple[ServerProcess, ...]]:
    with replicas(*(ServerProcess(tiny_model_dir, env=LIGHT_MODEL_ENV) for _ in range(2))) as servers:
        yield servers


class Load:
    """``CLIENTS`` threads posting a new image each time through nginx, until ``stop()``; ``sent`` records all."""

    def __init__(self, nginx: Nginx) -> None:
        self.sent: list[Sent] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._seeds = iter(range(10_000, 1_000_000))
        self._url = nginx.url
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]
        for thread in self._threads:
            thread.start()

    def answered_since(self, instant: float) -> int:
        with self.lock:
            return sum(s.started >= instant for s in self.sent)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in self._threads), "a client thread is stuck"

    def _client(self) -> None:
        with httpx.Client(base_url=self._url, timeout=30) as http:
            while not self._stop.is_set():
                with self.lock:
                    seed = next(self._seeds)
                request_id = uuid.uuid4().hex
                record = Sent(request_id, time.monotonic(), None)
                try:
                    # A new image every time: each request is real model work, so some are in flight at the kill.
                    # With an Idempotency-Key, as the Python client sends: nginx replays only such POSTs.
                    response = http.post(
                        "/api/v1/caption",
                        content=photo(seed, size=(64, 48)),
                        headers={
                            "Content-Type": "image/png",
                            "X-Request-ID": request_id,
                            "Idempotency-Key": request_id,
                        },
                    )
                    record.status = response.status_code
                    if response.status_code != 200:
                        record.error = response.text[:200]
                    assert response.headers["x-request-id"] == request_id  # passed through both ways
                except (httpx.HTTPError, AssertionError) as exc:
                    record.error = repr(exc)
                with self.lock:
                    self.sent.append(record)


def test_sigkill_of_one_replica_under_load_fails_no_client_request(
    pair: tuple[ServerProcess, ...], tmp_path: Path
) -> None:
    victim, survivor = pair
    with Nginx(tmp_path, upstream_ports=[victim.port, survivor.port]) as nginx:
        load = Load(nginx)
        sent = load.sent
        victim_addr, survivor_addr = f"127.0.0.1:{victim.port}", f"127.0.0.1:{survivor.port}"

        def served_by_both() -> bool:
            return {str(e["upstream"]) for e in nginx.access_log()} >= {victim_addr, survivor_addr}

        phase(lambda: len(sent) >= ANSWERED_BEFORE_KILL and served_by_both(), "load before the kill")
        survivor_before = _requests_total(survivor)
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()

        phase(lambda: load.answered_since(killed_at) >= ANSWERED_AFTER_KILL, "load after the kill")
        load.stop()
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


def _requests_total(server: ServerProcess) -> float:
    """captioner_requests_total summed over its status labels."""
    text = server.probe("/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("captioner_requests_total{"))


def test_a_dead_model_process_sends_no_5xx_to_clients_once_readiness_dropped(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = {**LIGHT_MODEL_ENV, "CAPTIONER_MODEL__WORKER": "process"}
    with (
        replicas(*(ServerProcess(tiny_model_dir, env=env) for _ in range(2))) as (victim, survivor),
        Nginx(tmp_path, upstream_ports=[victim.port, survivor.port]) as nginx,
    ):
        load = Load(nginx)
        victim_addr, survivor_addr = f"127.0.0.1:{victim.port}", f"127.0.0.1:{survivor.port}"

        def upstreams() -> set[str]:
            return {str(e["upstream"]).split(", ")[-1] for e in nginx.access_log()}

        phase(lambda: len(load.sent) >= ANSWERED_BEFORE_KILL and upstreams() >= {victim_addr, survivor_addr},
              "load before the kill")  # fmt: skip
        os.kill(model_child_pid(victim.pid), signal.SIGKILL)
        killed_at = time.monotonic()
        phase(lambda: _readyz(victim) == 503, "the victim's /readyz to drop")
        dropped_at = time.monotonic()
        phase(lambda: load.answered_since(dropped_at) >= ANSWERED_AFTER_KILL, "load after the drop")
        phase(lambda: _readyz(victim) == 200, "the victim's model process to be respawned")
        back_at = time.monotonic()
        victim_served_before = _requests_total(victim)
        # nginx's passive check (max_fails/fail_timeout) lets it back in within 10 s; then it takes work again.
        phase(lambda: _requests_total(victim) > victim_served_before, "the victim to serve again")
        load.stop()
        assert victim.alive() and survivor.alive()  # only the model process died, and it came back

        with load.lock:
            sent = list(load.sent)
        after_drop = [s for s in sent if s.started >= dropped_at]
        failed_after_drop = [s for s in after_drop if s.status != 200]
        assert not failed_after_drop, f"{len(failed_after_drop)} of {len(after_drop)}: {failed_after_drop[:5]}"
        # Before the drop, only what the victim's model was running at the kill may have failed, with a 500
        # (not replayed: that request may be what killed it).
        failed = [s for s in sent if s.status != 200]
        assert all(s.status == 500 and s.started < dropped_at for s in failed), failed
        log = {entry["request_id"]: entry for entry in nginx.access_log()}
        # Evidence that the path was exercised: the victim refused requests and nginx replayed them. Counted from
        # the kill, not from when this test saw /readyz drop (on a loaded machine that poll can come late).
        both = f"{victim_addr}, {survivor_addr}"
        retried = [s for s in sent if s.started >= killed_at and log.get(s.request_id, {}).get("upstream") == both]
        assert retried, "nginx never had to retry a request the victim refused"
        assert all(log[s.request_id]["upstream_status"].startswith("503") for s in retried)
        assert victim.metric("captioner_model_respawns_total") == 1
        print(
            f"\n/readyz dropped {dropped_at - killed_at:.2f} s after the kill, back {back_at - killed_at:.1f} s "
            f"after it; {len(after_drop)} requests after the drop, all 200, {len(retried)} replayed by nginx; "
            f"{len(failed)} failed in all (500: in flight at the kill)"
        )


def _readyz(server: ServerProcess) -> int:
    return server.probe("/readyz").status_code
