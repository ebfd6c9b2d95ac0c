"""Model health in a real server process: a SIGKILLed model process, and a CUDA error that ends the replica.

- ``model.worker: process``: SIGKILL the model child while a batch runs in it. The requests in flight get a
  clean 503 ``overloaded`` + Retry-After (the batch it was running too: a batch lost with its process is not the
  requests' fault, issue 21), /readyz turns 503, new requests get 503 ``overloaded`` + Retry-After, and the
  child is respawned, warmed up, ready and captioning again.
- ``model.worker: thread`` with a CUDA error injected (tests/system/faulty_serve.py): the batch on the device
  gets 500, the requests queued behind it 503, and the process drains and exits with status 1 for its
  orchestrator to restart (that /readyz says 503 meanwhile: tests/unit/http/test_health_http.py).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.support.faulty_serve import FAULT_FILE_ENV, release_file
from tests.support.images import photo
from tests.support.paths import REPO_ROOT
from tests.support.processes import ServerProcess, model_child_pid
from tests.support.waits import wait_for

CAPTION = "/api/v1/caption"
DEADLINE_S = 180.0  # generous: a respawn loads torch, transformers and the model again, on a busy machine


def post(url: str, seed: int, timeout: float = 120) -> httpx.Response:
    return httpx.post(url + CAPTION, content=photo(seed, size=(64, 48)), headers={"Content-Type": "image/png"},
                      timeout=timeout)  # fmt: skip


Sending = tuple[list[threading.Thread], list[httpx.Response], list[BaseException]]


def concurrently(url: str, seeds: list[int]) -> Sending:
    responses: list[httpx.Response] = []
    errors: list[BaseException] = []

    def send(seed: int) -> None:
        try:
            responses.append(post(url, seed))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(seed,)) for seed in seeds]
    for thread in threads:
        thread.start()
    return threads, responses, errors


def test_a_killed_model_process_is_respawned_and_the_replica_is_ready_again(tiny_model_dir: Path) -> None:
    env = {
        "CAPTIONER_MODEL__WORKER": "process",
        # A slow batch (~1-3 s), so the kill lands while one runs in the child.
        "CAPTIONER_GENERATION__NUM_BEAMS": "4",
        "CAPTIONER_GENERATION__MIN_LENGTH": "300",
        "CAPTIONER_GENERATION__MAX_LENGTH": "300",
        "CAPTIONER_BATCHING__MAX_WAIT_MS": "10",
        # Down for at least this long: a request sent once /readyz said 503 must find the model still down.
        "CAPTIONER_HEALTH__RESPAWN_BACKOFF_S": "4",
    }
    with ServerProcess(tiny_model_dir, env=env, ready_timeout_s=DEADLINE_S) as server:
        first_child = model_child_pid(server.pid)
        threads, responses, errors = concurrently(server.url, [1, 2, 3])
        wait_for(lambda: server.metric("captioner_batch_size_count") >= 1, "a batch in the model process", DEADLINE_S)
        os.kill(first_child, signal.SIGKILL)
        killed_at = time.monotonic()

        wait_for(lambda: server.probe("/readyz").status_code == 503, "/readyz 503", DEADLINE_S)
        down_at = time.monotonic()
        status = server.probe("/readyz").json()["status"]
        assert status.startswith("model down: the model process died (killed by SIGKILL)"), status
        refused = post(server.url, 4)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded", refused.text
        assert int(refused.headers["retry-after"]) >= 1

        for thread in threads:
            thread.join(timeout=120)
        assert not errors and len(responses) == 3, errors  # every request in flight was answered: none hangs
        codes = sorted((r.status_code, r.json()["error"]["code"]) for r in responses)
        # The batch the child was running when it died too: 503 + Retry-After, never 500.
        assert codes == [(503, "overloaded")] * 3, codes
        assert all(int(r.headers["retry-after"]) >= 1 for r in responses)

        wait_for(lambda: server.probe("/readyz").status_code == 200, "ready again", DEADLINE_S)
        back_at = time.monotonic()
        assert model_child_pid(server.pid) != first_child
        assert server.metric("captioner_model_respawns_total") == 1
        assert server.metric("captioner_model_up") == 1 and server.metric("captioner_ready") == 1
        again = post(server.url, 5)
        assert again.status_code == 200 and again.json()["captions"], again.text
        print(f"\n/readyz 503 after {down_at - killed_at:.2f} s; ready again after {back_at - killed_at:.1f} s")


def test_a_cuda_error_drains_the_replica_and_exits_non_zero(tiny_model_dir: Path, tmp_path: Path) -> None:
    trigger = tmp_path / "fail-now"
    env = {
        FAULT_FILE_ENV: str(trigger),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "CAPTIONER_BATCHING__MAX_BATCH_SIZE": "1",  # one request per batch: the others queue behind the broken one
        # The fault is injected into this process's BlipCaptioner, and a CUDA error on the thread worker is the
        # case that needs a new replica (the process worker's child exits and is respawned: the test above).
        "CAPTIONER_MODEL__WORKER": "thread",
        "CAPTIONER_SERVER__DRAIN_TIMEOUT_S": "30",
    }
    with ServerProcess(tiny_model_dir, env=env, module="tests.support.faulty_serve") as server:
        assert post(server.url, 1).status_code == 200
        trigger.touch()  # the next batch fails once released
        threads, responses, errors = concurrently(server.url, [2, 3, 4])
        # One waits at the model's door behind the broken batch (a full batch of 1), one in the queue.
        wait_for(lambda: server.metric("captioner_queue_depth") == 1, "requests queued behind the first", DEADLINE_S)
        release_file(trigger).touch()
        fault_at = time.monotonic()
        assert server.process is not None
        assert server.process.wait(timeout=60) == 1  # non-zero: the orchestrator restarts it
        exited_after = time.monotonic() - fault_at
        for thread in threads:
            thread.join(timeout=60)
        assert not errors and len(responses) == 3, errors  # every request it had accepted was answered
        codes = sorted((r.status_code, r.json()["error"]["code"]) for r in responses)
        # The batch on the device: 500; the two behind it: refused without touching the device, 503.
        assert codes == [(500, "model_error"), (503, "overloaded"), (503, "overloaded")], codes
        log = server.log(20_000)
        assert "device error: AcceleratorError: CUDA error: an illegal memory access" in log, log
        assert "must be restarted" in log
        print(f"\nexit status 1 {exited_after:.1f} s after the fault; answers {codes}")
