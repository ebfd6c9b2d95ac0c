"""deploy/nginx.conf replays a POST on another replica only when the server deduplicates it: a caption (POST
/api/v1/caption or POST /) with an Idempotency-Key. The real nginx runs the shipped file on loopback in front of
two stand-in replicas: the first reads each request whole and closes the connection without answering (a replica
SIGKILLed with the request in hand), the second answers 200. What each stand-in received, and nginx's own
access log, say whether a request was sent twice."""

from __future__ import annotations

import json
import socketserver
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.support.nginx import Nginx


class Dying(socketserver.ThreadingTCPServer):
    """Reads a whole request (head and body), then closes the connection: the request arrived, no answer left."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.received: list[str] = []  # the X-Request-ID of each request read
        super().__init__(("127.0.0.1", 0), _DyingHandler)
        self.port = self.server_address[1]


class _DyingHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        assert isinstance(self.server, Dying)
        headers: dict[str, str] = {}
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        self.rfile.read(int(headers.get("content-length", "0")))
        self.server.received.append(headers.get("x-request-id", ""))


class Answering(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.received: list[tuple[str, str | None]] = []  # (X-Request-ID, Idempotency-Key)
        super().__init__(("127.0.0.1", 0), _AnsweringHandler)
        self.port = self.server_address[1]


class _AnsweringHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        assert isinstance(self.server, Answering)
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.append((self.headers.get("X-Request-ID", ""), self.headers.get("Idempotency-Key")))
        body = json.dumps({"status": "success"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def replicas() -> Iterator[tuple[Dying, Answering]]:
    dying, answering = Dying(), Answering()
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (dying, answering)]
    for thread in threads:
        thread.start()
    yield dying, answering
    for server in (dying, answering):
        server.shutdown()
        server.server_close()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()


CASES = [
    # (path and query, Idempotency-Key, replayed?)
    ("/api/v1/caption", "key", True),
    ("/api/v1/caption?mode=async", "key", True),
    ("/", "key", True),  # Hugging Face's POST /: a caption too
    ("/api/v1/caption", None, False),
    ("/api/v1/caption?mode=async", None, False),  # an async submit without a key: replayed, it would be two jobs
    ("/api/v1/feedback", None, False),
    ("/api/v1/feedback", "key", False),  # the server keeps no feedback per key: a replay would count twice
]


@pytest.mark.parametrize(("target", "key", "replayed"), CASES)
def test_a_post_that_reached_a_dying_replica_is_replayed_only_with_a_key(
    replicas: tuple[Dying, Answering], tmp_path: Path, target: str, key: str | None, replayed: bool
) -> None:
    dying, answering = replicas
    with Nginx(tmp_path, upstream_ports=[dying.port, answering.port]) as nginx:
        sent: list[tuple[str, int]] = []
        # Round robin between two idle replicas: within a few requests one goes to the dying replica first.
        while not dying.received:
            assert len(sent) < 6, "nginx never sent a request to the first replica"
            request_id = uuid.uuid4().hex
            headers = {"Content-Type": "image/png", "X-Request-ID": request_id}
            if key is not None:
                headers["Idempotency-Key"] = f"{key}-{request_id}"
            response = httpx.post(nginx.url + target, content=b"\x89PNG not an image", headers=headers, timeout=30)
            sent.append((request_id, response.status_code))
    log = {entry["request_id"]: entry for entry in nginx.access_log()}  # complete once nginx has stopped

    (victim,) = dying.received
    status = dict(sent)[victim]
    upstreams = str(log[victim]["upstream"]).split(", ")
    answered = [request_id for request_id, _ in answering.received]
    if replayed:
        assert status == 200 and upstreams == [f"127.0.0.1:{dying.port}", f"127.0.0.1:{answering.port}"]
        assert answered.count(victim) == 1
        assert (victim, f"{key}-{victim}") in answering.received  # the same key reached the second replica
    else:
        assert status == 503 and upstreams == [f"127.0.0.1:{dying.port}"]  # the 502, in the API's JSON shape
        assert victim not in answered  # sent once, to the replica that died with it
    # Every other request went to the answering replica once, and succeeded.
    assert all(code == 200 for request_id, code in sent if request_id != victim)
    assert sorted(answered) == sorted(r for r, _ in sent if r != victim or replayed)


def test_nginx_says_no_replica_left_in_json_on_the_replay_path_too(
    tmp_path: Path, replicas: tuple[Dying, Answering]
) -> None:
    dying, _ = replicas
    with Nginx(tmp_path, upstream_ports=[dying.port]) as nginx:
        response = httpx.post(nginx.url + "/api/v1/caption", content=b"x",
                              headers={"Content-Type": "image/png", "Idempotency-Key": "k"}, timeout=30)  # fmt: skip
    assert response.status_code == 503 and response.json()["error"]["code"] == "overloaded"
    assert response.headers["retry-after"] == "1"
