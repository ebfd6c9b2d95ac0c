"""Issue 13, HTTP-level, against the real ``python -m captioner serve``: slow clients (a body trickled after its
headers -> 408, a head trickled -> 408, idle sockets past ``limit_concurrency`` -> 503 until the head deadline
frees them), forwarded headers believed only from the configured proxy (IPv6 by /64, junk in one bucket),
exposed start-up without keys refused in one line, and secrets kept out of start-up and SIGHUP errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.images import photo
from tests.support.processes import ServerProcess

CAPTION = "/api/v1/caption"
BODY_TIMEOUT_S = 2.0
HEAD_TIMEOUT_S = 2.0
LIMIT = 6  # server.limit_concurrency


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[ServerProcess]:
    env = {
        "CAPTIONER_LIMITS__BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "CAPTIONER_LIMITS__HEADER_TIMEOUT_S": str(HEAD_TIMEOUT_S),
        "CAPTIONER_SERVER__LIMIT_CONCURRENCY": str(LIMIT),
        # 127.0.0.1 plays the reverse proxy; 127.0.0.2 (loopback too) plays a client that talks to us directly.
        "CAPTIONER_SERVER__FORWARDED_ALLOW_IPS": '["127.0.0.1"]',
        # One request per client per 50 s: a second one from the same bucket is a 429.
        "CAPTIONER_RATE_LIMIT__PER_KEY_RPS": "0.02",
        "CAPTIONER_RATE_LIMIT__BURST": "1",
        "CAPTIONER_GENERATION__NUM_BEAMS": "1",
    }
    with ServerProcess(tiny_model_dir, env=env) as process:
        yield process


_client_counter = iter(range(1, 250))


def fresh_client() -> str:
    """A forwarded address never used before in this module: a full rate-limit bucket."""
    return f"198.51.100.{next(_client_counter)}"


def post(server: ServerProcess, forwarded_for: str | None, *, source: str = "127.0.0.1") -> httpx.Response:
    headers = {"Content-Type": "image/png"} | ({"X-Forwarded-For": forwarded_for} if forwarded_for else {})
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=60) as client:
        return client.post(server.url + CAPTION, content=photo(3), headers=headers)


def read_response(sock: socket.socket, deadline: float) -> bytes:
    received = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:  # closed with our unread bytes still in its buffer: the kernel sends a reset
            break
        if not chunk:
            break
        received += chunk
    return received


# --- slow clients ----------------------------------------------------------------------------------------


def test_a_trickled_body_gets_408_within_the_deadline_and_the_connection_closes(server: ServerProcess) -> None:
    head = (
        f"POST {CAPTION} HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n"
        f"X-Forwarded-For: {fresh_client()}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=0.2) as sock:
        sock.sendall(head)
        sent_head = time.monotonic()
        answer = b""
        while time.monotonic() - sent_head < BODY_TIMEOUT_S + 20:
            try:
                sock.sendall(b"\x00" * 10)  # 40 bytes a second: 100 KB would take 40 minutes
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            answer += chunk
            if not chunk or b'"code":"timeout"' in answer.replace(b" ", b""):
                break
        answered_after = time.monotonic() - sent_head
        answer += read_response(sock, time.monotonic() + 5)  # then the server closes the connection
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b'"code":"timeout"' in answer.replace(b" ", b"")
    assert b"connection: close" in answer.lower()
    assert BODY_TIMEOUT_S - 0.2 <= answered_after < BODY_TIMEOUT_S + 15
    assert server.metric("captioner_errors_total", 'code="timeout"') >= 1
    assert post(server, fresh_client()).status_code == 200  # and the server is fine


def test_a_trickled_head_gets_408_and_is_closed(server: ServerProcess) -> None:
    head = f"POST {CAPTION} HTTP/1.1\r\nHost: localhost\r\nX-Padding: {'a' * 200}\r\n".encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=0.2) as sock:
        opened = time.monotonic()
        answer = b""
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                chunk = sock.recv(65536)
                answer += chunk
                if not chunk or answer.startswith(b"HTTP/1.1 408"):
                    break
            except TimeoutError:
                pass  # 0.2 s per byte: the head needs a minute, the deadline is 2 s
        closed_after = time.monotonic() - opened
        answer += read_response(sock, time.monotonic() + 5)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert HEAD_TIMEOUT_S - 0.2 <= closed_after < HEAD_TIMEOUT_S + 15


def test_idle_sockets_past_the_limit_get_503_then_the_head_deadline_frees_them(server: ServerProcess) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=0.2) for _ in range(LIMIT)]
    try:
        time.sleep(0.3)  # the server has accepted them (accepting is not waiting for state: nothing to poll)
        refused = post(server, fresh_client())
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "overloaded"
        assert int(refused.headers["retry-after"]) >= 1
        # Within the head deadline the idle sockets are answered 408 and closed, and new requests are served.
        deadline = time.monotonic() + HEAD_TIMEOUT_S + 20
        endings = [read_response(sock, deadline) for sock in idle]
        assert all(e == b"" or e.startswith(b"HTTP/1.1 408 ") for e in endings), endings
        served = None
        while time.monotonic() < deadline:
            served = post(server, fresh_client())
            if served.status_code == 200:
                break
            time.sleep(0.2)
        assert served is not None and served.status_code == 200, served.text if served else None
    finally:
        for sock in idle:
            sock.close()


# --- forwarded headers ------------------------------------------------------------------------------------


def test_a_client_that_forges_x_forwarded_for_gets_no_fresh_bucket(server: ServerProcess) -> None:
    first = post(server, "203.0.113.1", source="127.0.0.2")
    assert first.status_code == 200, first.text
    second = post(server, "203.0.113.2", source="127.0.0.2")  # not a trusted proxy: its header is ignored
    assert second.status_code == 429 and "retry-after" in second.headers


def test_the_trusted_proxy_names_the_client_and_ipv6_counts_by_64(server: ServerProcess) -> None:
    a, b = fresh_client(), fresh_client()
    assert post(server, a).status_code == 200
    assert post(server, b).status_code == 200  # another client behind the proxy: its own bucket
    assert post(server, a).status_code == 429  # the first again: its own bucket is empty
    assert post(server, "2001:db8:1:2::1").status_code == 200
    assert post(server, "2001:db8:1:2:ffff::99").status_code == 429  # the same /64
    assert post(server, "2001:db8:1:3::1").status_code == 200  # the next /64


def test_unparsable_forwarded_addresses_share_one_bucket(server: ServerProcess) -> None:
    assert post(server, "not-an-address").status_code == 200
    assert post(server, "x" * 8000).status_code == 429  # another spelling, the same small bucket
    assert post(server, "also; not, an address").status_code == 429


# --- start-up: exposure and secrets ----------------------------------------------------------------------


def run_serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_")}
    return subprocess.run(
        [sys.executable, "-m", "captioner", "serve", *args],
        cwd=tmp_path, env={**environ, **(env or {})}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_an_exposed_server_without_keys_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    result = run_serve(tmp_path, "--host", "0.0.0.0", "--port", "1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "auth.api_keys" in lines[0] and "auth.allow_anonymous" in lines[0]


def test_start_up_config_errors_never_show_a_key(tmp_path: Path) -> None:
    secret = "sk-very-secret-startup-key"
    for env in ({"CAPTIONER_AUTH__API_KEYS": secret}, {"CAPTIONER_AUTH__API_KEYS": f"[{secret}, 7]"}):
        result = run_serve(tmp_path, env=env)
        assert result.returncode == 2 and "auth.api_keys" in result.stderr
        assert secret not in result.stderr + result.stdout


def test_a_sighup_with_a_bad_config_never_shows_a_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    secret = "sk-very-secret-sighup-key"
    config = tmp_path / "captioner.yaml"
    config.write_text(f"auth: {{api_keys: [{secret}]}}\nlogging: {{level: info}}\n")
    with ServerProcess(tiny_model_dir, args=["--config", str(config)]) as process:
        answer = httpx.post(
            process.url + CAPTION, content=photo(5), timeout=60,
            headers={"Content-Type": "image/png", "Authorization": f"Bearer {secret}"},
        )  # fmt: skip
        assert answer.status_code == 200
        config.write_text(f'auth: {{api_keys: "{secret}-new"}}\n')  # a string, not a list: refused
        process.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while "reload refused" not in process.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = process.log(tail=100_000)
        assert "reload refused" in log and "auth.api_keys" in log
        assert secret not in log
