"""SIGTERM drain, on the real ``python -m captioner serve`` process: nothing accepted is lost.

The batcher is made to hold requests (a batch wait of five minutes and a batch size they can't fill), so that when
SIGTERM arrives several requests are accepted and still unanswered (and, the queue being full, one more is
refused with 503 ``overloaded``). Then: /readyz says 503 while the port stays open, new requests get 503
``overloaded``, every accepted request still gets its 200, and the process exits 0 without running into
``server.drain_timeout_s``.

No wall-clock budget decides these tests (the machine may be loaded): "at once" is shown by causality. A
draining batcher dispatches its queue without waiting for the batch deadline, so the accepted requests are
answered well before those five minutes have passed since they were sent; a batcher that waited could not answer
before it, however fast the machine.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.support.images import photo
from tests.support.processes import ServerProcess
from tests.support.waits import wait_for

CAPTION = "/api/v1/caption"
IN_FLIGHT = 4
# The batch deadline the drain must not wait for: far longer than the drain takes even on a machine so loaded that
# a generate() of a few seconds takes a minute or two, so that only a drain that waits can miss it.
MAX_WAIT_S = 300.0
DRAIN_TIMEOUT_S = 600.0  # above MAX_WAIT_S: a drain that waited for the deadline would still answer, late
PROBE_S = 30.0  # only against a hang: how long to poll for a state that should come at once


def post(url: str, data: bytes) -> httpx.Response:
    return httpx.post(url + CAPTION, content=data, headers={"Content-Type": "image/png"}, timeout=DRAIN_TIMEOUT_S)


def test_sigterm_answers_everything_accepted_then_exits_0(tiny_model_dir: Path) -> None:
    env = {
        "CAPTIONER_BATCHING__MAX_WAIT_MS": str(int(MAX_WAIT_S * 1000)),
        "CAPTIONER_BATCHING__MAX_BATCH_SIZE": "16",
        "CAPTIONER_BATCHING__MAX_QUEUE": str(IN_FLIGHT),
        "CAPTIONER_BATCHING__REQUEST_TIMEOUT_S": str(int(DRAIN_TIMEOUT_S)),  # no 504 while held back
        "CAPTIONER_SERVER__DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
        # A generate() of a few seconds: the accepted requests are still in flight while we probe the drain.
        "CAPTIONER_GENERATION__NUM_BEAMS": "8",
        "CAPTIONER_GENERATION__MIN_LENGTH": "300",
        "CAPTIONER_GENERATION__MAX_LENGTH": "300",
        # That generate() is slow on purpose, minutes on a loaded machine: the batch watchdog (which treats a
        # batch with no answer for health.watchdog_s as a stuck model) is not what this test is about.
        "CAPTIONER_HEALTH__WATCHDOG_S": "0",
    }
    with ServerProcess(tiny_model_dir, env=env) as server, ThreadPoolExecutor(IN_FLIGHT) as pool:
        sent = time.monotonic()  # before any of them arrived: the batch deadline is later than sent + MAX_WAIT_S
        accepted: list[Future[httpx.Response]] = [
            pool.submit(post, server.url, photo(500 + i)) for i in range(IN_FLIGHT)
        ]
        # Accepted = decoded and waiting in the batcher's queue for a batch that won't fill.
        wait_for(lambda: server.metric("captioner_queue_depth") == IN_FLIGHT, "requests to be queued", PROBE_S)
        assert not any(f.done() for f in accepted)

        # Backpressure first: the queue is full, so one more request is refused at once, with a Retry-After.
        overflow = post(server.url, photo(550))
        assert overflow.status_code == 503, overflow.text
        assert overflow.json()["error"]["code"] == "overloaded"
        assert int(overflow.headers["Retry-After"]) >= 1

        os.kill(server.pid, signal.SIGTERM)

        # The port stays open; readiness flips, and new work is refused, while the accepted requests are in flight.
        wait_for(lambda: server.probe("/readyz").status_code == 503, "/readyz 503", PROBE_S)
        ready = server.probe("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert server.probe("/healthz").status_code == 200
        refused = post(server.url, photo(600))
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "overloaded"
        assert int(refused.headers["Retry-After"]) >= 1

        responses = [f.result(timeout=DRAIN_TIMEOUT_S) for f in accepted]
        answered_after = time.monotonic() - sent
        assert [r.status_code for r in responses] == [200] * IN_FLIGHT, [r.text for r in responses]
        assert all(r.json()["captions"] for r in responses)
        # The queued batch was dispatched on SIGTERM: a batcher that waited for its deadline could not have
        # answered before MAX_WAIT_S had passed since the requests were sent.
        assert answered_after < MAX_WAIT_S, f"answered {answered_after:.1f} s after sending: the drain waited"

        assert server.process is not None
        returncode = server.process.wait(timeout=DRAIN_TIMEOUT_S)
        # 0: drained, not cut off at drain_timeout_s (that exits 1, see below), and nothing failed on the way out.
        assert returncode == 0, server.log()
        print(f"answered {answered_after:.1f} s after sending (batch wait {MAX_WAIT_S:.0f} s)")


def test_a_drain_that_cannot_finish_still_exits_at_the_deadline(tiny_model_dir: Path) -> None:
    """Accepted work that outlives ``drain_timeout_s`` (here: a generate() of 500 tokens with 16 beams, several
    seconds even for the tiny model) does not hold the process: it exits, with status 1, once the deadline
    passes."""
    drain_timeout_s = 1.0
    env = {
        "CAPTIONER_GENERATION__NUM_BEAMS": "16",
        "CAPTIONER_GENERATION__MIN_LENGTH": "500",
        "CAPTIONER_GENERATION__MAX_LENGTH": "500",
        "CAPTIONER_HEALTH__WATCHDOG_S": "0",  # a generate() that outlasts the drain on purpose, not a stuck model
        # Both requests in one batch: it flushes when the second arrives, however long that takes.
        "CAPTIONER_BATCHING__MAX_BATCH_SIZE": "2",
        "CAPTIONER_BATCHING__MAX_WAIT_MS": str(int(MAX_WAIT_S * 1000)),
        "CAPTIONER_SERVER__DRAIN_TIMEOUT_S": str(drain_timeout_s),
    }
    with ServerProcess(tiny_model_dir, env=env) as server, ThreadPoolExecutor(2) as pool:
        stuck = [pool.submit(post, server.url, photo(650 + i)) for i in range(2)]
        wait_for(lambda: server.metric("captioner_batch_size_sum") == 2, "the batch to start", PROBE_S)
        signalled = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        assert server.process is not None
        returncode = server.process.wait(timeout=drain_timeout_s + PROBE_S)
        exited_after = time.monotonic() - signalled
        assert returncode == 1, server.log()
        assert exited_after >= drain_timeout_s  # it did wait for the drain first
        log = server.log(tail=1_000_000)
        assert "drain timed out after 1 s with 2 requests in flight" in log
        assert "Traceback" not in log
        for future in stuck:  # cut off, not left hanging
            assert isinstance(future.exception(timeout=PROBE_S), httpx.TransportError)


def test_sigterm_in_continuous_mode_finishes_the_live_sequences_then_exits_0(tiny_model_dir: Path) -> None:
    """``batching.mode: continuous``: the requests decoding in the model process's running set when SIGTERM
    arrives are finished and answered; new ones are refused; the process exits 0."""
    env = {
        "CAPTIONER_BATCHING__MODE": "continuous",
        "CAPTIONER_BATCHING__REQUEST_TIMEOUT_S": str(int(DRAIN_TIMEOUT_S)),
        "CAPTIONER_SERVER__DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
        # Long searches (300 tokens, 8 beams): still decoding while we probe the drain.
        "CAPTIONER_GENERATION__NUM_BEAMS": "8",
        "CAPTIONER_GENERATION__MIN_LENGTH": "300",
        "CAPTIONER_GENERATION__MAX_LENGTH": "300",
        "CAPTIONER_HEALTH__WATCHDOG_S": "0",
    }
    with ServerProcess(tiny_model_dir, env=env) as server, ThreadPoolExecutor(IN_FLIGHT) as pool:
        accepted = [pool.submit(post, server.url, photo(700 + i)) for i in range(IN_FLIGHT)]
        # Live = in the running set: every beam of every request is a row.
        wait_for(lambda: server.metric("captioner_decode_rows") == 8 * IN_FLIGHT, "the requests to decode", PROBE_S)
        assert not any(f.done() for f in accepted)
        os.kill(server.pid, signal.SIGTERM)
        wait_for(lambda: server.probe("/readyz").status_code == 503, "/readyz 503", PROBE_S)
        refused = post(server.url, photo(750))
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded", refused.text
        responses = [f.result(timeout=DRAIN_TIMEOUT_S) for f in accepted]
        assert [r.status_code for r in responses] == [200] * IN_FLIGHT, [r.text for r in responses]
        assert all(r.json()["captions"] for r in responses)
        assert server.process is not None
        assert server.process.wait(timeout=DRAIN_TIMEOUT_S) == 0, server.log()
