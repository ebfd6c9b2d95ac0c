"""Retries, against real servers: a real rate limit (429), a queue really held full (503), dropped connections.

Retries are observed through the client's ``on_retry`` hook, the server's metrics and the connections a socket
server counts; never through timing.
"""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from captioner.client import ConnectionFailed, JobNotDone, Overloaded, RateLimited, RetryEvent
from tests.support.client import Connect, sha256
from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.net import free_port
from tests.support.servers import LiveServer


@pytest.fixture(scope="module")
def limited_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    """One request a second per caller (the client's IP, auth being off), no burst beyond it."""
    with LiveServer(tiny_settings(tiny_model_dir, rate_limit={"per_key_rps": 1, "burst": 1})) as live:
        yield live


def test_rate_limited_calls_wait_their_retry_after(connect: Connect, limited_server: LiveServer) -> None:
    retries: list[RetryEvent] = []
    client = connect(limited_server.url, on_retry=retries.append)
    impatient = connect(limited_server.url, max_retries=0)
    refused_before = limited_server.metric("captioner_requests_total", 'status="429"')

    with pytest.raises(RateLimited) as refused:
        for _ in range(5):  # one token a second: these come faster
            impatient.caption(photo(105))
    assert refused.value.status_code == 429 and refused.value.retry_after_s == 1.0
    assert client.caption(photo(105)).cached  # refused first, then let in after Retry-After

    # Retry-After (1 s) is the floor; a jitter of up to the backoff's ceiling (0.5 s at first) comes on top.
    assert retries and all(event.status_code == 429 and 1.0 <= event.delay_s < 1.0 + 0.5 * 2 ** (event.attempt - 1)
                           for event in retries)  # fmt: skip
    refused_now = limited_server.metric("captioner_requests_total", 'status="429"')
    assert refused_now - refused_before == len(retries) + 1


@pytest.fixture
def held_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    """A queue of one request, held for up to 16 s (a batch of 16 never fills): a second request gets 503.

    Retry-After is the batches ahead times the batch deadline: 1/16 x 16 s = 1 s.
    """
    batching = {"max_queue": 1, "max_batch_size": 16, "max_wait_ms": 16_000}
    with LiveServer(tiny_settings(tiny_model_dir, batching=batching)) as live:
        yield live


def hold_queue(server: LiveServer, client: Any) -> str:
    """Fill the queue with an async job; returns its id once the server has it queued."""
    job = client.submit(photo(106))
    deadline = time.monotonic() + 60
    while server.metric("captioner_queue_depth") < 1:
        assert time.monotonic() < deadline, "the job never reached the batcher's queue"
        time.sleep(0.02)
    return str(job.job_id)


def release_queue(server: LiveServer) -> None:
    """Dispatch what is queued now instead of at the batch deadline (what a SIGTERM drain does)."""
    state = server.app.state.captioner
    state.loop.call_soon_threadsafe(state.pool.expedite)


def test_overloaded_calls_wait_their_retry_after(connect: Connect, held_server: LiveServer) -> None:
    retries: list[RetryEvent] = []

    def on_retry(event: RetryEvent) -> None:
        retries.append(event)
        release_queue(held_server)  # the queue empties while the client waits

    client = connect(held_server.url, on_retry=on_retry)
    refused_before = held_server.metric("captioner_requests_total", 'status="503"')
    job_id = hold_queue(held_server, client)
    with pytest.raises(Overloaded) as refused:
        connect(held_server.url, max_retries=0).caption(photo(107))
    assert (refused.value.status_code, refused.value.retry_after_s) == (503, 1.0)
    with pytest.raises(Overloaded):
        connect(held_server.url, max_retry_wait=0.5).caption(photo(107))  # Retry-After is over the budget
    with pytest.raises(JobNotDone):
        client.result(job_id, wait=False)

    result = client.caption(photo(107))

    assert result.image_sha256 == sha256(photo(107))
    assert retries[0].status_code == 503 and 1.0 <= retries[0].delay_s < 1.5
    assert held_server.metric("captioner_requests_total", 'status="503"') == refused_before + 2 + len(retries)
    assert client.result(job_id).image_sha256 == sha256(photo(106))


class ClosingServer(socketserver.ThreadingTCPServer):
    """Reads each request and closes the connection without answering: a connection broken mid-request."""

    daemon_threads = True

    def __init__(self) -> None:
        self.connections = 0
        super().__init__(("127.0.0.1", 0), _CloseHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _CloseHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        assert isinstance(self.server, ClosingServer)
        self.server.connections += 1
        self.request.recv(65536)


@pytest.fixture
def closing_server() -> Iterator[ClosingServer]:
    server = ClosingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_broken_connections_are_retried_for_idempotent_calls_only(
    connect: Connect, closing_server: ClosingServer
) -> None:
    client = connect(closing_server.url, max_retries=1)

    def attempts(call: Callable[[], object]) -> int:
        before = closing_server.connections
        with pytest.raises(ConnectionFailed):
            call()
        return closing_server.connections - before

    assert attempts(lambda: client.caption(b"image")) == 2
    assert attempts(lambda: client.submit(b"image", idempotency_key="k1")) == 2
    assert attempts(lambda: client.result("0" * 32)) == 2
    assert attempts(lambda: client.submit(b"image")) == 2  # with the key made for it: one job however often sent
    assert attempts(lambda: client.feedback(image_sha256="0" * 64, caption="a cat", rating=5)) == 1
    assert attempts(client.health) == 1  # a probe reports the present


def test_refused_connections_are_retried_for_every_call(connect: Connect) -> None:
    retries: list[RetryEvent] = []
    client = connect(f"http://127.0.0.1:{free_port()}", max_retries=1, on_retry=retries.append)

    with pytest.raises(ConnectionFailed) as failed:
        client.feedback(image_sha256="0" * 64, caption="a cat", rating=5)  # nothing was sent: safe to repeat

    assert failed.value.code == "connection_error"
    assert [(e.attempt, e.status_code) for e in retries] == [(1, None)]
    assert 0 <= retries[0].delay_s < 0.5  # a random share of the first backoff ceiling
