"""What the client puts on the wire and how it reads answers that aren't the captioner's, against a stand-in app.

The stand-in (a real Starlette app over real sockets) records what it receives: ``submit``'s idempotency key and
callback URL, which the server doesn't act on yet; and it answers like a proxy's error page or a web server
that isn't a captioner.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from captioner.client import ApiError, UnexpectedResponse
from tests.support.client import Connect
from tests.support.images import photo
from tests.support.servers import AppServer


@pytest.fixture(scope="module")
def stand_in() -> Iterator[tuple[AppServer, list[dict[str, Any]]]]:
    """A stand-in for what the captioner doesn't act on yet (job callbacks), and for a proxy's error page."""
    received: list[dict[str, Any]] = []

    async def caption(request: Request) -> Response:
        if request.query_params.get("mode") != "async":
            return HTMLResponse("<html><body>502 Bad Gateway</body></html>", status_code=502)
        received.append({"params": dict(request.query_params), "key": request.headers.get("idempotency-key")})
        return JSONResponse({"status": "processing", "job_id": "f" * 32, "estimated_time_seconds": 0.5}, 202)

    async def not_json(request: Request) -> Response:
        return HTMLResponse("<html>it works</html>")

    app = Starlette(
        routes=[
            Route("/api/v1/caption", caption, methods=["POST"]),
            Route("/healthz", not_json),
        ]
    )
    with AppServer(app) as server:
        yield server, received


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
