"""The fleet under combined faults (issue 21): real processes throughout, about a thousand sync and async requests
over a minute while a schedule breaks one part after another, then the invariants.

The fleet: deploy/nginx.conf (the real nginx) in front of three ``captioner serve`` replicas, a state Redis with an
append-only file fsynced at every write (as deploy/ runs it), and one model registry folder they share.

- ``api``: ``--role api``, no model; its sync captions are relayed through the Redis queue, carrying their
  caller's deadline (k8s split's api pods);
- ``b`` and ``c``: ``--role all``: they caption their own sync requests and work the queue (compose and k8s
  all-in-one). So every path a request can take crosses the faults: local sync, relayed sync, async jobs.

The schedule, each step waiting on the fleet rather than on the clock (a slow machine makes the run longer, not
different):
1. a broken canary (weights that don't load) promoted in the registry at 20 %;
2. SIGKILL of replica ``b`` (and with it its model process), restarted as its orchestrator would restart it;
3. once ``b`` is ready again: SIGSTOP of ``c``'s model process for 10 s (the batch watchdog is 3 s here);
4. SIGKILL of Redis, restarted on the same folder a second later;
5. Redis paused (SIGSTOP) for 2 s;
the load runs on for a minute in all, then every accepted job is polled to its end.

Invariants:
- every 202 job ends, ``success``, and has one result (the same body from every replica, whatever polled);
- one job per ``Idempotency-Key`` (a quarter of the submits are sent twice with their key);
- every sync answer is 200, or 503/504 with ``Retry-After``; nothing else (no 500, no transport error);
- at every probe, at least one replica is ready, and no replica is ever unready because of the canary;
- the broken canary is rolled back exactly once for the fleet (the registry's history; the replicas' counters);
- no relayed job is computed after its deadline: its record (kept in Redis) ended by then, give or take the one
  batch already running at that moment, or it is a 504 that never ran.

The figures of the run (requests, answers by status, faults, rollbacks, releases) are printed, and quoted in
docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from captioner.registry.store import Registry
from captioner.shared_state.job_stream import IDEMPOTENCY_PREFIX, RECORD_PREFIX
from tests.support.images import photo
from tests.support.nginx import Nginx
from tests.support.processes import ServerProcess, children, rss_bytes
from tests.support.redis import RedisServer
from tests.support.registry import cli, last_line
from tests.support.servers import replicas
from tests.support.waits import wait_for

CAPTION = "/api/v1/caption"
RATE_PER_S = 17.0  # about a thousand requests in the minute
RUN_S = 60.0
CLIENTS = 8
ASYNC_SHARE = 3  # one request in ASYNC_SHARE is an async submit
RESUBMIT_SHARE = 4  # one async submit in RESUBMIT_SHARE is sent again with its Idempotency-Key
REQUEST_TIMEOUT_S = 8.0  # batching.request_timeout_s: short, so that deadlines pass during the faults
JOBS_TTL_S = 900.0
# A relayed job may end after its caller's deadline only by the batch that was already running at that moment.
BATCH_GRACE_S = 3.0
MODEL_STOP_S = 10.0
REDIS_DOWN_S = 1.0
REDIS_PAUSE_S = 2.0

FLEET_ENV = {
    "CAPTIONER_JOBS__QUEUE": "redis",
    "CAPTIONER_JOBS__LEASE_S": "3",
    "CAPTIONER_JOBS__TTL_S": str(int(JOBS_TTL_S)),
    "CAPTIONER_BATCHING__MAX_WAIT_MS": "10",
    "CAPTIONER_BATCHING__REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
    "CAPTIONER_HEALTH__WATCHDOG_S": "3",
    "CAPTIONER_HEALTH__RESPAWN_BACKOFF_S": "0.5",
    "CAPTIONER_REGISTRY__POLL_S": "0.5",
    "CAPTIONER_CANARY__INTERVAL_S": "0.5",
    "CAPTIONER_CANARY__MAX_DOWN_S": "2",
    "CAPTIONER_SERVER__DRAIN_TIMEOUT_S": "5",
    # Greedy, short captions: the test is about the fleet, so each request's model work is kept small.
    "CAPTIONER_GENERATION__NUM_BEAMS": "1",
    "CAPTIONER_GENERATION__MIN_LENGTH": "1",
    "CAPTIONER_GENERATION__MAX_LENGTH": "8",
}


@dataclass
class Answer:
    kind: str  # "sync" | "async" | "resubmit"
    key: str  # its Idempotency-Key
    sent_at: float  # wall clock: compared with the records' wall-clock times
    status: int | None  # None: a transport error
    retry_after: str | None
    body: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class Traffic:
    """CLIENTS threads sending a new image each time through nginx, paced to RATE_PER_S, until ``stop()``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[Answer] = []
        self.lock = threading.Lock()
        self._sequence = iter(range(1_000_000))
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]
        for thread in self._threads:
            thread.start()

    def count(self, condition: Callable[[Answer], bool] = lambda a: True) -> int:
        with self.lock:
            return sum(1 for answer in self.answers if condition(answer))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in self._threads), "a client thread is stuck"

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self._stop.is_set():
                with self.lock:
                    n = next(self._sequence)
                pause = self._start + n / RATE_PER_S - time.monotonic()
                if pause > 0 and self._stop.wait(pause):
                    return
                body = photo(50_000 + n, size=(64, 48))
                key = uuid.uuid4().hex
                if n % ASYNC_SHARE:
                    self._record(self._send(http, "sync", key, body))
                    continue
                submitted = self._send(http, "async", key, body)
                self._record(submitted)
                if n % (ASYNC_SHARE * RESUBMIT_SHARE) == 0 and submitted.status == 202:
                    self._record(self._send(http, "resubmit", key, body))

    def _send(self, http: httpx.Client, kind: str, key: str, body: bytes) -> Answer:
        params = {} if kind == "sync" else {"mode": "async"}
        answer = Answer(kind, key, time.time(), None, None)
        try:
            response = http.post(CAPTION, params=params, content=body,
                                 headers={"Content-Type": "image/png", "Idempotency-Key": key})  # fmt: skip
        except httpx.HTTPError as exc:
            answer.error = repr(exc)
            return answer
        answer.status, answer.retry_after = response.status_code, response.headers.get("retry-after")
        try:
            answer.body = response.json()
        except ValueError:
            answer.error = response.text[:300]
        return answer

    def _record(self, answer: Answer) -> None:
        with self.lock:
            self.answers.append(answer)


@dataclass
class Probe:
    at: float
    replica: str
    status: int | None
    reason: str


class Readiness:
    """Every replica's /readyz, probed directly (not through nginx) every 0.2 s until ``stop()``."""

    def __init__(self, fleet: dict[str, ServerProcess]) -> None:
        self.fleet = fleet
        self.rounds: list[list[Probe]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=2) as http:
            while not self._stop.wait(0.2):
                now, probes = time.monotonic(), []
                for name, server in self.fleet.items():
                    try:
                        response = http.get(server.url + "/readyz")
                        reason = "" if response.status_code == 200 else response.text[:300]
                        probes.append(Probe(now, name, response.status_code, reason))
                    except httpx.HTTPError as exc:
                        probes.append(Probe(now, name, None, type(exc).__name__))
                self.rounds.append(probes)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass
class Fleet:
    nginx: Nginx
    redis: RedisServer
    servers: dict[str, ServerProcess]
    registry: Path
    workdir: Path
    events: list[tuple[float, str]] = field(default_factory=list)

    def event(self, what: str) -> None:
        self.events.append((time.monotonic(), what))


def broken_copy(model: Path, out: Path) -> Path:
    """``model`` with weights that don't load: a canary whose model process can never start."""
    shutil.copytree(model, out)
    for weights in out.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    return out


@pytest.fixture
def fleet(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Fleet]:
    registry = tmp_path / "registry"
    assert last_line(cli("models", "register", str(tiny_model_dir), "--name", "captioner", "--registry",
                         str(registry), cwd=tmp_path)) == "1"  # fmt: skip
    promoted = cli("models", "promote", "captioner", "1", "--force", "--registry", str(registry), cwd=tmp_path)
    assert promoted.returncode == 0, promoted.stderr
    (tmp_path / "redis").mkdir()
    with RedisServer(tmp_path / "redis", appendonly=True) as state:
        env = {**FLEET_ENV, "CAPTIONER_JOBS__REDIS_URL": state.url, "CAPTIONER_REGISTRY__PATH": str(registry)}
        api = ServerProcess(tiny_model_dir, env=env, args=["--role", "api"])
        b, c = (ServerProcess(tiny_model_dir, env=env) for _ in range(2))
        with replicas(api, b, c):
            (tmp_path / "nginx").mkdir()
            with Nginx(tmp_path / "nginx", upstream_ports=[api.port, b.port, c.port]) as nginx:
                yield Fleet(nginx, state, {"api": api, "b": b, "c": c}, registry, tmp_path)


def production_model_pid(server: ServerProcess) -> int:
    """The replica's serving model process: the biggest of its model processes (a canary that failed to load may
    still have one, nearly empty, on its way out)."""
    candidates = [pid for pid in children(server.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert candidates, f"no model process under {server.pid}"
    return max(candidates, key=rss_bytes)


def relayed_job(store: redis.Redis, key: str) -> str | None:
    """The job an api-role replica made for the sync request with this Idempotency-Key (None: an all-role replica
    served it itself). Keys are per owner; with auth off the owner is empty (jobs/durable_queue.py)."""
    mapped = store.get(IDEMPOTENCY_PREFIX + hashlib.sha256(f"\0{key}".encode()).hexdigest())
    return None if mapped is None else str(mapped).split(" ")[0]


def stored_record(store: redis.Redis, job_id: str) -> dict[str, Any]:
    raw = store.get(RECORD_PREFIX + job_id)
    assert raw is not None, f"job {job_id} has no record"
    return json.loads(raw)  # type: ignore[no-any-return]


def poll_to_the_end(url: str, job_ids: set[str], timeout_s: float = 240) -> dict[str, dict[str, Any]]:
    """Each job's final body, polled through nginx."""
    ended: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=30) as http:
        while len(ended) < len(job_ids):
            for job_id in sorted(job_ids - ended.keys()):
                response = http.get(f"{CAPTION}/{job_id}")
                assert response.status_code in (200, 503), (job_id, response.status_code, response.text)
                if response.status_code == 200 and response.json()["status"] != "processing":
                    ended[job_id] = response.json()
            assert time.monotonic() < deadline, f"{len(job_ids) - len(ended)} jobs never ended"
            time.sleep(0.5)
    return ended


def run_schedule(fleet: Fleet, traffic: Traffic, tiny_model_dir: Path) -> None:
    servers, started = fleet.servers, time.monotonic()

    def answered(n: int, what: str) -> None:
        wait_for(lambda: traffic.count(lambda a: a.status is not None) >= n, what, timeout_s=120)

    answered(40, "traffic before the faults")
    # 1. A broken canary at 20 %: its model never loads; production must stay ready and serve.
    broken = broken_copy(tiny_model_dir, fleet.workdir / "broken")
    assert last_line(cli("models", "register", str(broken), "--name", "captioner", "--registry",
                         str(fleet.registry), cwd=fleet.workdir)) == "2"  # fmt: skip
    done = cli("models", "promote", "captioner", "2", "--canary", "20", "--force", "--registry",
               str(fleet.registry), cwd=fleet.workdir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    fleet.event("broken canary at 20 %")
    answered(traffic.count() + 60, "traffic with the canary")
    # 2. SIGKILL a worker replica, then start it again, as its orchestrator would.
    b = servers["b"]
    os.kill(b.pid, signal.SIGKILL)
    assert b.process is not None and b.process.wait(timeout=10) == -signal.SIGKILL
    fleet.event("SIGKILL replica b")
    time.sleep(1)
    b.start()
    b.wait_ready()
    fleet.event("replica b ready again")
    # 3. A stuck model process: SIGSTOP for 10 s; the watchdog (3 s) kills and respawns it meanwhile.
    model = production_model_pid(servers["c"])
    os.kill(model, signal.SIGSTOP)
    fleet.event("SIGSTOP c's model process")
    time.sleep(MODEL_STOP_S)
    try:
        os.kill(model, signal.SIGCONT)
        fleet.event("SIGCONT c's model process (it was still there)")
    except ProcessLookupError:
        fleet.event("c's stopped model process was already gone (watchdog)")
    # 4. Redis SIGKILLed, and restarted on the same folder (its AOF) a second later.
    fleet.redis.kill()
    fleet.event("SIGKILL Redis")
    time.sleep(REDIS_DOWN_S)
    fleet.redis.start()
    fleet.event("Redis restarted")
    answered(traffic.count() + 30, "traffic after the Redis restart")
    # 5. Redis paused for 2 s.
    pid = fleet.redis.pid()
    os.kill(pid, signal.SIGSTOP)
    fleet.event("SIGSTOP Redis")
    time.sleep(REDIS_PAUSE_S)
    os.kill(pid, signal.SIGCONT)
    fleet.event("SIGCONT Redis")
    time.sleep(max(0.0, RUN_S - (time.monotonic() - started)))


def test_nothing_accepted_is_lost_or_stalled_when_the_fleets_parts_fail_together(
    fleet: Fleet, tiny_model_dir: Path
) -> None:
    readiness = Readiness(fleet.servers)
    traffic = Traffic(fleet.nginx.url)
    began = time.monotonic()
    try:
        run_schedule(fleet, traffic, tiny_model_dir)
    finally:
        traffic.stop()
        readiness.stop()
    ran_s = time.monotonic() - began
    answers = traffic.answers

    # Every answer is one the invariants allow.
    by_kind = Counter((a.kind, a.status) for a in answers)
    for answer in answers:
        assert answer.status is not None, f"a transport error: {answer.error}"
        assert answer.status != 500 and answer.status < 600, (answer.kind, answer.status, answer.body)
        if answer.kind == "sync":
            assert answer.status in (200, 503, 504), (answer.status, answer.body)
        else:
            assert answer.status in (202, 503), (answer.kind, answer.status, answer.body)
        if answer.status in (503, 504):
            assert answer.retry_after is not None and int(answer.retry_after) >= 1, answer.body

    # One job per Idempotency-Key: a submit sent again with its key is the same job.
    submitted = {a.key: a.body["job_id"] for a in answers if a.kind == "async" and a.status == 202}
    for again in (a for a in answers if a.kind == "resubmit"):
        if again.status == 202:
            assert again.body["job_id"] == submitted[again.key]
    assert len(set(submitted.values())) == len(submitted)

    # Every accepted job ends, success, with one result: the same body from whichever replica is asked. The api
    # replica's relayed sync requests are jobs too: each ends once, success or (its caller gone) 504.
    store = redis.Redis.from_url(fleet.redis.url, decode_responses=True)
    relayed = {a.key: job for a in answers if a.kind == "sync" and (job := relayed_job(store, a.key)) is not None}
    ended = poll_to_the_end(fleet.nginx.url, set(submitted.values()) | set(relayed.values()))
    outcomes = Counter(ended[job_id]["status"] for job_id in submitted.values())
    assert outcomes == Counter({"success": len(submitted)}), outcomes
    with httpx.Client(timeout=30) as http:
        for job_id, body in ended.items():
            for server in fleet.servers.values():
                assert http.get(f"{server.url}{CAPTION}/{job_id}").json() == body

    # No relayed job computed after its caller's deadline: it finished by then (give or take the batch already
    # running at that moment), or it ended 504 without running.
    late = 0
    try:
        for answer in (a for a in answers if a.key in relayed):
            record = stored_record(store, relayed[answer.key])
            if record["status"] == "success":
                finished_at = record["expires_at"] - JOBS_TTL_S  # a record lives jobs.ttl_s after its last change
                assert finished_at <= answer.sent_at + REQUEST_TIMEOUT_S + BATCH_GRACE_S, (answer, record)
            else:
                assert record["result"]["error"]["code"] == "timeout", record
                late += 1
    finally:
        store.close()
    assert relayed  # the api replica relayed some of the sync traffic

    # At least one replica ready at every probe; the canary never made a replica unready.
    assert readiness.rounds and all(any(p.status == 200 for p in probes) for probes in readiness.rounds)
    unready = [p for probes in readiness.rounds for p in probes if p.status not in (200, None)]
    assert not [p for p in unready if "canary" in p.reason], [p for p in unready if "canary" in p.reason][:3]
    model_replicas_ready = [any(p.status == 200 for p in probes if p.replica != "api") for probes in readiness.rounds]

    # The broken canary: rolled back exactly once, for the whole fleet.
    registry = Registry(fleet.registry)
    aliases = registry.aliases("captioner")
    rollbacks = [entry for entry in aliases.history if entry["action"] == "canary_rollback"]
    assert len(rollbacks) == 1 and (aliases.production, aliases.canary) == (1, None), aliases.history
    assert len(registry.version("captioner", 2).meta["rollbacks"]) == 1
    counted = sum(server.metric("captioner_rollbacks_total") for server in fleet.servers.values())
    assert counted <= 1  # a replica that led and was then killed took its count with it

    # The stopped model process was the watchdog's to find: c killed it and came back with a new one.
    assert fleet.servers["c"].metric("captioner_model_watchdog_kills_total") == 1
    assert rollbacks[0]["reason"].startswith("model_down")

    releases = sum(s.metric("captioner_job_releases_total") for s in fleet.servers.values())
    expired = sum(s.metric("captioner_job_expired_total") for s in fleet.servers.values())
    figures = {
        "ran_s": round(ran_s, 1),
        "requests": len(answers),
        "answers": {f"{kind} {status}": n for (kind, status), n in sorted(by_kind.items(), key=str)},
        "jobs_accepted": len(submitted),
        "jobs_success": outcomes["success"],
        "relayed_sync": len(relayed),
        "relayed_ended_timeout": late,
        "probe_rounds": len(readiness.rounds),
        "rounds_without_a_ready_model_replica": model_replicas_ready.count(False),
        "unready_probes": Counter(p.replica for p in unready),
        "rollbacks": len(rollbacks),
        "rollback_reason": rollbacks[0].get("reason"),
        "job_releases_live_replicas": releases,
        "jobs_expired_live_replicas": expired,
        "events": [(round(t - began, 1), what) for t, what in fleet.events],
    }
    print("fleet chaos figures:", json.dumps(figures, indent=1, default=str))
