"""API keys, rate limits, URL input and client disconnects, through real HTTP with the tiny model."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.servers import API_KEY, LiveServer
from tests.support.waits import wait_for

CAPTION = "/api/v1/caption"
KEY = API_KEY
SECOND_KEY = "another-key"
RATE_KEY = "key-used-only-by-the-rate-limit-test"


@pytest.fixture(scope="module")
def gate_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    digest = hashlib.sha256(SECOND_KEY.encode()).hexdigest()
    # A token every 4 s: the test's four quick requests can't earn one back meanwhile, even on a loaded machine.
    limits = {"per_key_rps": 0.25, "burst": 3}
    with LiveServer.keyed(tiny_model_dir, KEY, f"sha256:{digest}", RATE_KEY, rate_limit=limits) as server:
        yield server


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong"), {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer"}],
    ids=["missing", "wrong", "not-bearer", "empty"],
)
def test_missing_or_wrong_key_is_401_with_www_authenticate(gate_server: LiveServer, headers: dict[str, str]) -> None:
    response = httpx.post(gate_server.url + CAPTION, content=photo(1), headers={"Content-Type": "image/png", **headers})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "unauthorized"


def test_plain_and_hashed_keys_are_accepted_and_health_stays_open(gate_server: LiveServer) -> None:
    for key, seed in ((KEY, 2), (SECOND_KEY, 3)):
        response = httpx.post(
            gate_server.url + CAPTION, content=photo(seed), headers={"Content-Type": "image/png", **bearer(key)}
        )
        assert response.status_code == 200, response.text
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(gate_server.url + path).status_code == 200


def test_rate_limit_is_per_key_with_an_accurate_retry_after(gate_server: LiveServer) -> None:
    # Cached first (by another key), so the rate-limited requests below are quick cache hits.
    warm = httpx.post(
        gate_server.url + CAPTION, content=photo(10), headers={"Content-Type": "image/png", **bearer(KEY)}
    )
    assert warm.status_code == 200
    headers = {"Content-Type": "image/png", **bearer(RATE_KEY)}
    codes = [httpx.post(gate_server.url + CAPTION, content=photo(10), headers=headers) for _ in range(4)]
    assert [c.status_code for c in codes] == [200, 200, 200, 429]  # the burst of 3, then refused
    refused = codes[3]
    assert refused.json()["error"]["code"] == "rate_limited"
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 4
    # The other key has its own bucket.
    other = httpx.post(
        gate_server.url + CAPTION, content=photo(10), headers={"Content-Type": "image/png", **bearer(SECOND_KEY)}
    )
    assert other.status_code == 200
    time.sleep(retry_after)
    again = httpx.post(gate_server.url + CAPTION, content=photo(10), headers=headers)
    assert again.status_code == 200, again.text


def test_keys_never_reach_the_logs(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = tiny_settings(tiny_model_dir, auth={"api_keys": [KEY]})
    with caplog.at_level(logging.DEBUG), LiveServer(settings) as server:
        httpx.post(server.url + CAPTION, content=photo(4), headers={"Content-Type": "image/png", **bearer(KEY)})
        httpx.post(server.url + CAPTION, content=photo(4), headers={"Content-Type": "image/png", **bearer("guess")})
    assert caplog.records, "expected some log records"
    assert KEY not in caplog.text and "guess" not in caplog.text


# --- URL input ------------------------------------------------------------------------------------------


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    image = photo(20)

    def do_GET(self) -> None:
        if self.path == "/cat.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(self.image)))
            self.end_headers()
            self.wfile.write(self.image)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/cat.png")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_site() -> Iterator[str]:
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{site.server_address[1]}"
    site.shutdown()


@pytest.fixture(scope="module")
def url_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    settings = tiny_settings(tiny_model_dir, url_input={"allow_private_networks": True, "timeout_s": 3})
    with LiveServer(settings) as server:
        yield server


def test_url_input_fetches_real_images_by_json_and_form(url_server: LiveServer, image_site: str) -> None:
    expected = hashlib.sha256(_ImageHandler.image).hexdigest()
    by_json = httpx.post(url_server.url + CAPTION, json={"url": image_site + "/cat.png"})
    assert by_json.status_code == 200, by_json.text
    assert by_json.json()["image_sha256"] == expected
    by_form = httpx.post(url_server.url + CAPTION, data={"url": image_site + "/redirect", "num_captions": "2"})
    assert by_form.status_code == 200, by_form.text
    assert by_form.json()["image_sha256"] == expected and len(by_form.json()["captions"]) == 2


def test_url_errors_are_400_with_their_codes(url_server: LiveServer, image_site: str, live_server: LiveServer) -> None:
    missing = httpx.post(url_server.url + CAPTION, json={"url": image_site + "/missing.png"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (400, "url_fetch_failed")
    scheme = httpx.post(url_server.url + CAPTION, json={"url": "file:///etc/passwd"})
    assert (scheme.status_code, scheme.json()["error"]["code"]) == (400, "url_not_allowed")
    # The default server refuses loopback targets, however they are spelled.
    port = image_site.rsplit(":", 1)[1]
    for host in ("127.0.0.1", "2130706433", "0177.0.0.1", "[::ffff:127.0.0.1]", "localhost"):
        refused = httpx.post(live_server.url + CAPTION, json={"url": f"http://{host}:{port}/cat.png"})
        assert (refused.status_code, refused.json()["error"]["code"]) == (400, "url_not_allowed"), host


# --- client disconnects ---------------------------------------------------------------------------------


def test_a_client_that_disconnects_before_inference_costs_no_generate_work(tiny_model_dir: Path) -> None:
    # Batches of two, and a batch wait far longer than the test: a batch starts only when two requests are queued.
    settings = tiny_settings(tiny_model_dir, batching={"max_wait_ms": 600_000, "max_batch_size": 2})
    with LiveServer(settings) as server:
        data = photo(30)
        head = (
            f"POST {CAPTION} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(head + data)
            wait_for(lambda: server.metric("captioner_queue_depth") == 1, "the request to be queued")
        # The client is gone: its request is answered 499 and leaves the queue before any batch takes it.
        wait_for(lambda: server.metric("captioner_requests_total", 'status="499"') == 1, "the disconnect")
        wait_for(lambda: server.metric("captioner_queue_depth") == 0, "the abandoned request to leave the queue")

        async def two() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(
                    *(client.post(server.url + CAPTION, content=photo(seed), headers={"Content-Type": "image/png"})
                      for seed in (31, 32))
                )  # fmt: skip

        kept = asyncio.run(two())  # these two fill a batch: had the abandoned one stayed, it would ride in it
        assert [r.status_code for r in kept] == [200, 200]
        assert server.metric("captioner_images_total") == 2  # only the requests that stayed
        assert server.metric("captioner_batch_size_sum") == 2
        assert server.metric("captioner_requests_total", 'status="499"') == 1
