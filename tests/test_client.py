"""``captioner.client``: Client and AsyncClient against real servers (the tiny model over real sockets).

Most tests run twice, once per client: the async one is driven from the test on one event loop. Retries are
observed through the client's ``on_retry`` hook and the server's own metrics, never through timing.
"""

from __future__ import annotations

import asyncio
import hashlib
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from captioner import errors as server_errors
from captioner.client import (
    ApiError,
    AsyncClient,
    Client,
    ConnectionFailed,
    InvalidImage,
    InvalidRequest,
    JobNotDone,
    NotFound,
    Overloaded,
    RateLimited,
    RetryEvent,
    Unauthorized,
    UnexpectedResponse,
    UrlNotAllowed,
)
from captioner.client.errors import ERRORS
from tests.conftest import LiveServer, free_port, photo, tiny_settings

MODEL = "test/tiny-blip"
CORRUPT = photo(0)[:200]  # a PNG cut short


class Blocking:
    """An ``AsyncClient`` driven from synchronous test code, on one event loop for all its calls."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._runner = asyncio.Runner()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._runner.run(method(*args, **kwargs))

    def close(self) -> None:
        self._runner.run(self._client.aclose())
        self._runner.close()


Connect = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """``connect(url, **options)``: a Client, or an AsyncClient behind ``Blocking``; closed after the test."""
    opened: list[Any] = []

    def make(url: str, **options: Any) -> Any:
        client = Client(url, **options) if request.param == "sync" else Blocking(AsyncClient(url, **options))
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- captions and errors -------------------------------------------------------------------------------


def test_captions_bytes_a_path_and_a_file_alike(connect: Connect, live_server: LiveServer, tmp_path: Path) -> None:
    data = photo(101)
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    client = connect(live_server.url)

    first = client.caption(data)
    text, confidence = first.captions[0]
    assert first.text == text and 0 < confidence <= 1
    assert (first.model, first.image_sha256, first.variant) == (MODEL, sha256(data), "default")
    assert first.raw["status"] == "success"
    for image in (path, str(path)):
        again = client.caption(image)
        assert again.cached and again.captions == first.captions
    with path.open("rb") as file:
        assert client.caption(file).image_sha256 == sha256(data)


def test_num_captions(connect: Connect, live_server: LiveServer) -> None:
    result = connect(live_server.url).caption(photo(102), num_captions=2)

    assert len(result.captions) == 2
    assert len({c.text for c in result.captions}) == 2
    assert result.captions[0].confidence >= result.captions[1].confidence


def test_server_errors_are_typed_and_not_retried(connect: Connect, live_server: LiveServer) -> None:
    retries: list[RetryEvent] = []
    client = connect(live_server.url, on_retry=retries.append)
    refused_before = live_server.metric("captioner_requests_total", 'status="422"')

    with pytest.raises(InvalidImage) as corrupt:
        client.caption(CORRUPT)
    assert (corrupt.value.status_code, corrupt.value.code) == (400, "invalid_image")
    assert corrupt.value.message and corrupt.value.request_id
    with pytest.raises(InvalidRequest) as bad_count:
        client.caption(photo(103), num_captions=99)
    assert (bad_count.value.status_code, bad_count.value.code) == (422, "invalid_request")
    assert "num_captions" in bad_count.value.message
    # A URL goes to the server as JSON {"url": ...}; the server refuses to fetch from loopback.
    with pytest.raises(UrlNotAllowed) as url:
        client.caption(f"{live_server.url}/healthz")
    assert url.value.status_code == 400

    assert retries == []
    assert live_server.metric("captioner_requests_total", 'status="422"') == refused_before + 1


@pytest.fixture(scope="module")
def keyed_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    with LiveServer(tiny_settings(tiny_model_dir, auth={"api_keys": ["client-key"]})) as live:
        yield live


def test_api_key_from_the_argument_or_the_environment(
    connect: Connect, keyed_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAPTIONER_API_KEY", raising=False)
    with pytest.raises(Unauthorized) as missing:
        connect(keyed_server.url).caption(photo(104))
    assert missing.value.status_code == 401
    assert connect(keyed_server.url, api_key="client-key").caption(photo(104)).model == MODEL

    monkeypatch.setenv("CAPTIONER_API_KEY", "client-key")
    assert connect(keyed_server.url).caption(photo(104)).cached
    with pytest.raises(Unauthorized):
        connect(keyed_server.url, api_key="wrong").caption(photo(104))  # the argument wins
    with pytest.raises(Unauthorized):
        connect(keyed_server.url, api_key="").caption(photo(104))  # "" sends no key at all


# -- retries ---------------------------------------------------------------------------------------------


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

    assert retries and all(event.status_code == 429 and event.delay_s == 1.0 for event in retries)
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
    assert retries[0].status_code == 503 and retries[0].delay_s == 1.0
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
    assert attempts(lambda: client.submit(b"image")) == 1  # a second POST could make a second job
    assert attempts(lambda: client.feedback(image_sha256="0" * 64, caption="a cat", rating=5)) == 1
    assert attempts(client.health) == 1  # a probe reports the present


def test_refused_connections_are_retried_for_every_call(connect: Connect) -> None:
    retries: list[RetryEvent] = []
    client = connect(f"http://127.0.0.1:{free_port()}", max_retries=1, on_retry=retries.append)

    with pytest.raises(ConnectionFailed) as failed:
        client.feedback(image_sha256="0" * 64, caption="a cat", rating=5)  # nothing was sent: safe to repeat

    assert failed.value.code == "connection_error"
    assert [(e.attempt, e.status_code, e.delay_s) for e in retries] == [(1, None, 0.5)]


# -- async jobs ------------------------------------------------------------------------------------------


def test_job_submit_and_result(connect: Connect, live_server: LiveServer) -> None:
    client = connect(live_server.url)
    data = photo(108)

    job = client.submit(data, num_captions=2)
    result = client.result(job)

    assert job.estimated_time_s is not None
    assert (result.job_id, result.image_sha256, len(result.captions)) == (job.job_id, sha256(data), 2)
    assert client.result(job.job_id).captions == result.captions


def test_a_failed_job_raises_its_error(connect: Connect, live_server: LiveServer) -> None:
    client = connect(live_server.url)

    job = client.submit(CORRUPT)  # accepted: the image is only decoded when the job runs
    with pytest.raises(InvalidImage) as failed:
        client.result(job)
    assert (failed.value.status_code, failed.value.code) == (400, "invalid_image")
    with pytest.raises(NotFound) as unknown:
        client.result("0" * 32)
    assert unknown.value.status_code == 404


@pytest.mark.anyio
async def test_async_client_captions_concurrently(live_server: LiveServer) -> None:
    images = [photo(seed) for seed in range(110, 114)]
    async with AsyncClient(live_server.url) as client:
        results = await asyncio.gather(*(client.caption(image) for image in images))
    assert [r.image_sha256 for r in results] == [sha256(image) for image in images]


# -- feedback, and answers that aren't the API's ---------------------------------------------------------


class AppServer:
    """uvicorn serving any ASGI app on a background thread."""

    def __init__(self, app: Starlette) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> AppServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the app server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def stand_in() -> Iterator[tuple[AppServer, list[dict[str, Any]]]]:
    """A stand-in for what the captioner doesn't serve yet (feedback, job callbacks), and for a proxy's error page."""
    received: list[dict[str, Any]] = []

    async def feedback(request: Request) -> Response:
        received.append({"json": await request.json(), "authorization": request.headers.get("authorization")})
        return JSONResponse({"status": "accepted"}, status_code=202)

    async def caption(request: Request) -> Response:
        if request.query_params.get("mode") != "async":
            return HTMLResponse("<html><body>502 Bad Gateway</body></html>", status_code=502)
        received.append({"params": dict(request.query_params), "key": request.headers.get("idempotency-key")})
        return JSONResponse({"status": "processing", "job_id": "f" * 32, "estimated_time_seconds": 0.5}, 202)

    async def not_json(request: Request) -> Response:
        return HTMLResponse("<html>it works</html>")

    app = Starlette(
        routes=[
            Route("/api/v1/feedback", feedback, methods=["POST"]),
            Route("/api/v1/caption", caption, methods=["POST"]),
            Route("/healthz", not_json),
        ]
    )
    with AppServer(app) as server:
        yield server, received


def test_feedback_request(connect: Connect, stand_in: tuple[AppServer, list[dict[str, Any]]]) -> None:
    server, received = stand_in
    client = connect(server.url, api_key="feedback-key")
    received.clear()

    client.feedback(image_sha256="ab" * 32, caption="a cat", rating=1, correction="a dog on a sofa")
    client.feedback(job_id="0" * 32, caption="a cat", rating=5)

    assert received == [
        {
            "json": {"image_sha256": "ab" * 32, "caption": "a cat", "rating": 1, "correction": "a dog on a sofa"},
            "authorization": "Bearer feedback-key",
        },
        {"json": {"job_id": "0" * 32, "caption": "a cat", "rating": 5}, "authorization": "Bearer feedback-key"},
    ]
    with pytest.raises(ValueError, match="exactly one"):
        client.feedback(image_sha256="ab" * 32, job_id="0" * 32, caption="a cat", rating=5)
    with pytest.raises(ValueError, match="exactly one"):
        client.feedback(caption="a cat", rating=5)


def test_submit_sends_the_idempotency_key_and_the_callback_url(
    connect: Connect, stand_in: tuple[AppServer, list[dict[str, Any]]]
) -> None:
    server, received = stand_in
    client = connect(server.url)
    received.clear()

    job = client.submit(photo(109), 2, idempotency_key="order-17", callback_url="https://example.com/done")

    assert (job.job_id, job.estimated_time_s) == ("f" * 32, 0.5)
    params = {"mode": "async", "num_captions": "2", "callback_url": "https://example.com/done"}
    assert received == [{"params": params, "key": "order-17"}]


def test_answers_that_are_not_the_apis(connect: Connect, stand_in: tuple[AppServer, list[dict[str, Any]]]) -> None:
    server, _ = stand_in
    client = connect(server.url)

    with pytest.raises(ApiError) as proxy:
        client.caption(photo(109))
    assert (proxy.value.status_code, proxy.value.code) == (502, "http_502")
    assert "502 Bad Gateway" in proxy.value.message
    with pytest.raises(UnexpectedResponse):
        client.health()


# -- the package itself ----------------------------------------------------------------------------------


def test_every_server_error_code_has_its_exception() -> None:
    def subclasses(cls: type[server_errors.CaptionerError]) -> list[type[server_errors.CaptionerError]]:
        return [cls, *(sub for direct in cls.__subclasses__() for sub in subclasses(direct))]

    statuses: dict[str, set[int]] = {}
    for cls in subclasses(server_errors.CaptionerError):
        statuses.setdefault(cls.code, set()).add(cls.status_code)
    for code, seen in statuses.items():
        assert code in ERRORS, f"the client has no exception for the server's {code!r}"
        assert ERRORS[code][1] in seen, f"{code}: the client says {ERRORS[code][1]}, the server {seen}"


def test_the_client_imports_nothing_of_the_server() -> None:
    code = "import sys, captioner.client; print(sorted(m for m in ('torch', 'starlette', 'PIL') if m in sys.modules))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
