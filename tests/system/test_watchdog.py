"""A stuck model process is noticed (issue 21, ``health.watchdog_s``): ``kill -STOP`` of the real model child of
a real ``captioner serve`` under steady load. The watchdog finds its batch unanswered, ``/readyz`` turns 503 with
the watchdog's reason, the stopped process is SIGKILLed and replaced, the replica is ready and captioning again,
and every request meanwhile got 200 or 503 + Retry-After: never a 500, never a hang."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import httpx

from tests.support.images import photo
from tests.support.processes import ServerProcess, model_child_pid

CAPTION = "/api/v1/caption"
WATCHDOG_S = 3.0
DEADLINE_S = 180.0  # a respawn loads torch, transformers and the model again, on a busy machine


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> float:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic()


def readyz(server: ServerProcess) -> httpx.Response:
    return httpx.get(server.url + "/readyz", timeout=5)


class Load:
    """Threads posting a new image each, until stopped; every answer (status, Retry-After) is kept."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url = url
        self.answers: list[tuple[float, int, str | None]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._seeds = iter(range(10_000, 100_000))
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=120) as client:
            while not self._stop.is_set():
                with self._lock:
                    seed = next(self._seeds)
                try:
                    response = client.post(self.url + CAPTION, content=photo(seed, size=(48, 32)),
                                           headers={"Content-Type": "image/png"})  # fmt: skip
                except BaseException as exc:
                    self.errors.append(exc)
                    return
                with self._lock:
                    self.answers.append((time.monotonic(), response.status_code, response.headers.get("retry-after")))
                if response.status_code == 503:
                    time.sleep(0.1)  # as a client honouring Retry-After would, but quicker

    def count(self, status: int, since: float = 0.0) -> int:
        with self._lock:
            return sum(1 for at, code, _ in self.answers if code == status and at >= since)

    def stop(self) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(timeout=150)


def test_a_stopped_model_process_is_killed_and_replaced_and_no_request_gets_a_500(tiny_model_dir: Path) -> None:
    env = {
        "CAPTIONER_MODEL__WORKER": "process",
        "CAPTIONER_HEALTH__WATCHDOG_S": str(WATCHDOG_S),
        "CAPTIONER_HEALTH__RESPAWN_BACKOFF_S": "1",
        # Quick batches (greedy, 8 tokens): far under the watchdog, so only the stopped process trips it.
        "CAPTIONER_GENERATION__NUM_BEAMS": "1",
        "CAPTIONER_GENERATION__MIN_LENGTH": "1",
        "CAPTIONER_GENERATION__MAX_LENGTH": "8",
        "CAPTIONER_BATCHING__MAX_WAIT_MS": "10",
    }
    with ServerProcess(tiny_model_dir, env=env, ready_timeout_s=DEADLINE_S) as server:
        stopped = model_child_pid(server.pid)
        load = Load(server.url)
        try:
            wait_until(lambda: load.count(200) >= 10, "answers before the stop")
            os.kill(stopped, signal.SIGSTOP)
            stopped_at = time.monotonic()
            down_at = wait_until(lambda: readyz(server).status_code == 503, "/readyz 503", timeout_s=WATCHDOG_S + 30)
            reason = readyz(server).json()["status"]
            # /readyz may have turned 503 already for the respawn (the reason then says the watchdog killed it).
            assert "watchdog" in reason, reason
            assert down_at - stopped_at < WATCHDOG_S + 10  # the stuck batch noticed after watchdog_s, not never
            wait_until(lambda: not _alive(stopped), "the stopped process to be killed")
            back_at = wait_until(lambda: readyz(server).status_code == 200, "ready again")
            replacement = model_child_pid(server.pid)
            assert replacement != stopped
            wait_until(lambda: load.count(200, since=back_at) >= 5, "captions from the new process")
        finally:
            load.stop()
            with suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)  # if the test failed before the kill: let it be stopped normally
        assert not load.errors, load.errors  # every request was answered: none hung or lost its connection
        codes = {code for _, code, _ in load.answers}
        assert codes <= {200, 503}, sorted(codes)
        refused = [(code, retry) for _, code, retry in load.answers if code == 503]
        assert refused, "no request was in flight during the stall"
        assert all(retry is not None and int(retry) >= 1 for _, retry in refused), refused
        assert server.metric("captioner_model_watchdog_kills_total") == 1
        assert server.metric("captioner_model_respawns_total") == 1
        assert server.metric("captioner_ready") == 1
        print(f"\n/readyz 503 {down_at - stopped_at:.1f} s after SIGSTOP (watchdog {WATCHDOG_S:g} s), ready again "
              f"{back_at - stopped_at:.1f} s after it; {len(load.answers)} answers: "
              f"{load.count(200)} x 200, {len(refused)} x 503")  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead, waiting to be reaped
