"""URL fetching: the SSRF rules (schemes, address classes, numeric IP spellings, host names no resolver could look
up), IP pinning, redirects re-checked at every hop, size and time limits, the shared cap; then real fetches over
sockets (plain HTTP, and HTTPS with SNI checks)."""

from __future__ import annotations

import asyncio
import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from captioner import __version__
from captioner.config import UrlInputSettings
from captioner.errors import TooLarge, UrlFetchFailed, UrlNotAllowed
from captioner.outbound.client import OutboundClient
from captioner.outbound.policy import check_address, host_problem, system_resolver
from captioner.outbound.url_fetch import UrlFetcher

pytestmark = pytest.mark.anyio

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:4700::1111"

# --------------------------------------------------------------------------------------------- address rules

REFUSED = [
    "127.0.0.1", "127.255.255.254", "10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "169.254.169.254", "100.64.0.1", "100.127.255.254", "224.0.0.1", "239.255.255.250", "0.0.0.0",
    "0.1.2.3", "255.255.255.255", "240.0.0.1", "192.0.2.1", "198.18.0.1", "192.0.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "fec0::1", "ff02::1", "ff0e::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::ffff:0.0.0.0", "::127.0.0.1",
    "2002:7f00:1::1", "2002:a00:1::", "64:ff9b::a00:1", "64:ff9b::7f00:1", "fe80::1%eth0",
]  # fmt: skip
ALLOWED = [
    PUBLIC_V4, "8.8.8.8", "1.1.1.1", "100.128.0.1", "172.32.0.1", PUBLIC_V6, "2001:4860:4860::8888",
    "::ffff:93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::1",
]  # fmt: skip
# With allow_private_networks these become fetchable; the ALWAYS_REFUSED ones never are.
PRIVATE_OK = ["127.0.0.1", "10.0.0.1", "169.254.169.254", "100.64.0.1", "::1", "fc00::1", "::ffff:127.0.0.1"]
ALWAYS_REFUSED = ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255", "::ffff:0.0.0.0"]


@pytest.mark.parametrize("ip", REFUSED)
def test_non_public_addresses_are_refused(ip: str) -> None:
    with pytest.raises(UrlNotAllowed) as info:
        check_address(ip, allow_private=False)
    assert info.value.code == "url_not_allowed" and info.value.status_code == 400
    assert ip not in info.value.message  # never echo what an internal name resolved to


@pytest.mark.parametrize("ip", ALLOWED)
def test_public_addresses_are_allowed(ip: str) -> None:
    check_address(ip, allow_private=False)


@pytest.mark.parametrize("ip", PRIVATE_OK)
def test_allow_private_networks_opens_private_addresses(ip: str) -> None:
    check_address(ip, allow_private=True)


@pytest.mark.parametrize("ip", ALWAYS_REFUSED)
def test_unspecified_multicast_and_broadcast_stay_refused(ip: str) -> None:
    with pytest.raises(UrlNotAllowed):
        check_address(ip, allow_private=True)


def test_a_name_is_not_an_address() -> None:
    with pytest.raises(UrlNotAllowed):
        check_address("example.com", allow_private=True)


# ------------------------------------------------------------------------------------ stubbed DNS + transport

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class Harness:
    """A fetcher wired to a fake DNS table and an httpx.MockTransport that records what it was sent."""

    def __init__(self, handler: Handler, dns: dict[str, list[str]] | None = None, **settings: Any) -> None:
        self.dns = dns or {}
        self.lookups: list[tuple[str, int]] = []
        self.requests: list[httpx.Request] = []

        async def record(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return await handler(request)

        async def resolve(host: str, port: int) -> list[str]:
            self.lookups.append((host, port))
            if host not in self.dns:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return self.dns[host]

        max_bytes = settings.pop("max_bytes", 1000)
        url_input = UrlInputSettings(**{"timeout_s": 2.0, **settings})
        self.client = OutboundClient(
            url_input.max_concurrent_fetches, resolver=resolve, transport=httpx.MockTransport(record)
        )
        self.fetcher = UrlFetcher(url_input, self.client, max_bytes=max_bytes)

    async def fetch(self, url: str) -> bytes:
        try:
            return await self.fetcher.fetch(url)
        finally:
            await self.client.aclose()


def respond(status: int = 200, body: bytes = b"image-bytes", **headers: str) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={k.replace("_", "-"): v for k, v in headers.items()})

    return handler


def redirect_to(location: str) -> httpx.Response:
    return httpx.Response(302, headers={"Location": location}, content=b"moved")


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://example.com:70/_GET", "javascript:alert(1)",
     "data:image/png;base64,iVBORw0KGgo=", "ws://example.com/", "//example.com/a.png", "example.com/a.png", "",
     "http:///a.png", "http://user:pass@img.example/a.png", "http://img.example@127.0.0.1/", "http://[::1/"],
)  # fmt: skip
async def test_bad_schemes_missing_hosts_and_credentials_are_refused(url: str) -> None:
    harness = Harness(respond(), {"img.example": [PUBLIC_V4]})
    with pytest.raises(UrlNotAllowed):
        await harness.fetch(url)
    assert harness.requests == []


LONG_LABEL = "a" * 64


@pytest.mark.parametrize(
    ("host", "problem"),
    [("", "empty"), ("a..b.example", "empty label"), (".a.example", "empty label"), ("a.example..", "empty label"),
     (f"{LONG_LABEL}.example", "63"), (("a" * 60 + ".") * 5 + "example", "253"), ("ex%20ample.com", "characters"),
     ("a*b.example", "characters")],
)  # fmt: skip
def test_host_names_no_resolver_could_look_up_are_named(host: str, problem: str) -> None:
    assert problem in (host_problem(host) or "")


@pytest.mark.parametrize(
    "host", ["img.example", "img.example.", "xn--bcher-kva.de", "_dmarc.example", "a-b.example", "a" * 63 + ".io"]
)
def test_usable_host_names_pass(host: str) -> None:
    assert host_problem(host) is None


@pytest.mark.parametrize(
    "url",
    ["http://a..b.com/x.jpg", "", "   ", f"http://{LONG_LABEL}.example/x.jpg", "https://.example/x.jpg",
     "http://ex ample.com/x.jpg"],
)  # fmt: skip
async def test_unusable_hosts_and_empty_urls_are_refused_before_any_lookup(url: str) -> None:
    """These reached getaddrinfo before, whose IDNA codec raised UnicodeError: a 500 instead of a 400."""
    harness = Harness(respond())
    with pytest.raises(UrlNotAllowed) as info:
        await harness.fetch(url)
    assert (info.value.status_code, info.value.code) == (400, "url_not_allowed")
    assert harness.lookups == [] and harness.requests == []


async def test_a_resolver_that_raises_unicode_error_is_a_refusal_not_a_crash() -> None:
    harness = Harness(respond())

    async def idna_fails(host: str, port: int) -> list[str]:
        raise UnicodeError("encoding with 'idna' codec failed (UnicodeError: label empty or too long)")

    harness.client._resolver = idna_fails
    with pytest.raises(UrlNotAllowed, match="does not resolve to a public address"):
        await harness.fetch("http://img.example/a.png")


@pytest.mark.parametrize(
    "url",
    ["http://2130706433/", "http://0177.0.0.1/", "http://0x7f.1/", "http://0x7f000001/", "http://127.1/",
     "http://017700000001/", "http://0x7F.0.0.1/", "http://127.0.0.1./", "http://[::ffff:127.0.0.1]/",
     "http://[::ffff:7f00:1]/", "http://[::1]:8080/", "http://0/", "http://167772161/", "http://0xa9fea9fe/",
     "http://1.2.3.4.5/", "http://example.123/", "http://localhost/"],
)  # fmt: skip
async def test_every_spelling_of_an_internal_address_is_refused(url: str) -> None:
    harness = Harness(respond(), {"localhost": ["127.0.0.1"]})
    with pytest.raises(UrlNotAllowed):
        await harness.fetch(url)
    assert harness.requests == []
    assert all(host == "localhost" for host, _ in harness.lookups)  # IP literals are never sent to DNS


@pytest.mark.parametrize(
    ("url", "ip", "host"),
    [("http://0x7f.1:8080/a", "127.0.0.1", "127.0.0.1:8080"), ("http://2130706433/a", "127.0.0.1", "127.0.0.1"),
     ("http://[::1]/a", "::1", "[::1]"), ("http://[::ffff:7f00:1]/a", "::ffff:7f00:1", "[::ffff:7f00:1]")],
)  # fmt: skip
async def test_numeric_spellings_are_normalised_to_the_ip_they_denote(url: str, ip: str, host: str) -> None:
    harness = Harness(respond(), allow_private_networks=True)
    assert await harness.fetch(url) == b"image-bytes"
    (request,) = harness.requests
    assert request.url.host == ip and request.headers["host"] == host


async def test_a_host_resolving_to_a_private_address_is_refused_before_any_connection() -> None:
    harness = Harness(respond(), {"sneaky.example": ["10.0.0.5"]})
    with pytest.raises(UrlNotAllowed) as info:
        await harness.fetch("http://sneaky.example/cat.png")
    assert info.value.code == "url_not_allowed"
    assert "10.0.0.5" not in info.value.message
    assert harness.requests == []


async def test_one_bad_address_among_good_ones_refuses_the_whole_host() -> None:
    harness = Harness(respond(), {"mixed.example": [PUBLIC_V4, "127.0.0.1"]})
    with pytest.raises(UrlNotAllowed):
        await harness.fetch("http://mixed.example/cat.png")
    assert harness.requests == []


@pytest.mark.parametrize(
    ("url", "ip", "host_header"),
    [("http://img.example/cat.png?x=1", PUBLIC_V4, "img.example"),
     ("https://img.example/cat.png", PUBLIC_V4, "img.example"),
     ("http://IMG.example:8080/cat.png", PUBLIC_V4, "img.example:8080"),
     ("https://v6.example/cat.png", PUBLIC_V6, "v6.example")],
)  # fmt: skip
async def test_the_request_goes_to_the_checked_ip_with_the_original_host(url: str, ip: str, host_header: str) -> None:
    harness = Harness(respond(), {"img.example": [PUBLIC_V4], "v6.example": [PUBLIC_V6]})
    assert await harness.fetch(url) == b"image-bytes"
    (request,) = harness.requests
    original = httpx.URL(url)
    assert request.url.host == ip  # pinned: no second lookup can change where we connect
    assert request.headers["host"] == host_header
    assert request.extensions["sni_hostname"] == original.host  # TLS verifies the name, not the IP
    assert (request.url.scheme, request.url.port, request.url.raw_path) == (
        original.scheme,
        original.port,
        original.raw_path,
    )
    assert request.headers["user-agent"] == f"captioner/{__version__}"
    assert "cookie" not in request.headers and "authorization" not in request.headers
    assert harness.lookups == [(original.host, original.port or {"http": 80, "https": 443}[original.scheme])]


async def test_a_redirect_to_an_internal_host_is_refused_at_the_second_hop() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return redirect_to("http://internal.example/admin")

    harness = Harness(handler, {"img.example": [PUBLIC_V4], "internal.example": ["127.0.0.1"]})
    with pytest.raises(UrlNotAllowed) as info:
        await harness.fetch("http://img.example/cat.png")
    assert info.value.code == "url_not_allowed"
    assert len(harness.requests) == 1
    assert [host for host, _ in harness.lookups] == ["img.example", "internal.example"]


@pytest.mark.parametrize(
    "location", ["http://169.254.169.254/latest/meta-data/", "http://[::1]/", "file:///etc/passwd", "http://0x7f.1/"]
)
async def test_redirects_to_internal_literals_or_other_schemes_are_refused(location: str) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return redirect_to(location)

    harness = Harness(handler, {"img.example": [PUBLIC_V4]})
    with pytest.raises(UrlNotAllowed):
        await harness.fetch("http://img.example/cat.png")
    assert len(harness.requests) == 1


async def test_redirects_are_followed_resolved_again_and_do_not_carry_cookies() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/start":
            return httpx.Response(301, headers={"Location": "/next", "Set-Cookie": "session=secret"})
        if request.url.path == "/next":
            return redirect_to("https://cdn.example/final.png")
        return httpx.Response(200, content=b"final")

    harness = Harness(handler, {"img.example": [PUBLIC_V4], "cdn.example": ["8.8.8.8"]})
    assert await harness.fetch("http://img.example/start") == b"final"
    assert [(r.url.host, r.headers["host"], r.url.path) for r in harness.requests] == [
        (PUBLIC_V4, "img.example", "/start"),
        (PUBLIC_V4, "img.example", "/next"),
        ("8.8.8.8", "cdn.example", "/final.png"),
    ]
    assert [host for host, _ in harness.lookups] == ["img.example", "img.example", "cdn.example"]
    assert all("cookie" not in r.headers for r in harness.requests)


@pytest.mark.parametrize(("max_redirects", "hops", "ok"), [(0, 0, True), (0, 1, False), (3, 3, True), (3, 4, False)])
async def test_redirect_chains_longer_than_max_redirects_fail(max_redirects: int, hops: int, ok: bool) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        step = int(request.url.path.strip("/") or 0)
        return redirect_to(f"/{step + 1}") if step < hops else httpx.Response(200, content=b"done")

    harness = Harness(handler, {"img.example": [PUBLIC_V4]}, max_redirects=max_redirects)
    if ok:
        assert await harness.fetch("http://img.example/") == b"done"
        return
    with pytest.raises(UrlFetchFailed, match="too many redirects") as info:
        await harness.fetch("http://img.example/")
    assert info.value.code == "url_fetch_failed"
    assert len(harness.requests) == max_redirects + 1


@pytest.mark.parametrize("status", [404, 500, 304])
async def test_non_2xx_statuses_fail_with_the_status_and_without_the_body(status: int) -> None:
    harness = Harness(respond(status, b"<html>secret internal error page</html>"), {"img.example": [PUBLIC_V4]})
    with pytest.raises(UrlFetchFailed) as info:
        await harness.fetch("http://img.example/missing.png")
    assert info.value.code == "url_fetch_failed" and info.value.status_code == 400
    assert str(status) in info.value.message and "secret" not in info.value.message


async def test_a_redirect_without_location_fails() -> None:
    harness = Harness(respond(302), {"img.example": [PUBLIC_V4]})
    with pytest.raises(UrlFetchFailed, match="Location"):
        await harness.fetch("http://img.example/")


async def trickle(total: int, chunk: int = 100, delay: float = 0.0) -> AsyncIterator[bytes]:
    for _ in range(total // chunk):
        if delay:
            await asyncio.sleep(delay)
        yield b"x" * chunk


@pytest.mark.parametrize("declared", ["with", "without", "lying"])
async def test_bodies_over_max_bytes_are_too_large(declared: str) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        headers = {"with": {"Content-Length": "5000"}, "without": {}, "lying": {"Content-Length": "10"}}[declared]
        return httpx.Response(200, headers=headers, content=trickle(5000))

    harness = Harness(handler, {"img.example": [PUBLIC_V4]}, max_bytes=1000)
    with pytest.raises(TooLarge) as info:
        await harness.fetch("http://img.example/huge.png")
    assert info.value.status_code == 413


async def test_a_body_of_exactly_max_bytes_is_fine() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=trickle(1000))

    harness = Harness(handler, {"img.example": [PUBLIC_V4]}, max_bytes=1000)
    assert await harness.fetch("http://img.example/a.png") == b"x" * 1000


async def test_compressed_bodies_are_refused_rather_than_inflated() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        # A streamed body: MockTransport would otherwise decode a bytes body itself before we see it.
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=trickle(100))

    harness = Harness(handler, {"img.example": [PUBLIC_V4]})
    with pytest.raises(UrlFetchFailed, match="gzip"):
        await harness.fetch("http://img.example/bomb.png")
    assert harness.requests[0].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize("where", ["headers", "body", "dns"])
async def test_the_whole_fetch_is_bounded_by_timeout_s(where: str) -> None:
    # Each stall is far longer than the timeout: headers and DNS never come in time, and the body trickles in
    # chunks 0.1 s apart (each within the timeout; only a deadline on the whole fetch stops it).
    stall_s = 30.0

    async def handler(request: httpx.Request) -> httpx.Response:
        if where == "headers":
            await asyncio.sleep(stall_s)
        return httpx.Response(200, content=trickle(int(stall_s * 10) * 10, chunk=10, delay=0.1))

    harness = Harness(handler, {"img.example": [PUBLIC_V4]}, timeout_s=0.2, max_bytes=10_000)
    if where == "dns":
        harness.client._resolver = lambda host, port: asyncio.sleep(stall_s, [PUBLIC_V4])
    started = time.monotonic()
    with pytest.raises(UrlFetchFailed, match=r"longer than 0\.2s"):
        await harness.fetch("http://img.example/slow.png")
    # A generous bound that still tells working from broken: cut off at 0.2 s, never left to the 30 s stall.
    assert time.monotonic() - started < stall_s / 3


async def test_the_timeout_covers_all_redirect_hops_together() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.08)  # each hop is well within the limit, the chain is not
        return redirect_to("/again")

    harness = Harness(handler, {"img.example": [PUBLIC_V4]}, timeout_s=0.2, max_redirects=10)
    with pytest.raises(UrlFetchFailed, match="longer than"):
        await harness.fetch("http://img.example/")


async def test_dns_failures_and_connection_errors_fail_cleanly() -> None:
    harness = Harness(respond(), {"empty.example": []})
    with pytest.raises(UrlNotAllowed, match="does not resolve to a public address"):
        await harness.fetch("http://nowhere.example/")
    harness = Harness(respond(), {"empty.example": []})
    with pytest.raises(UrlNotAllowed, match="does not resolve to a public address"):
        await harness.fetch("http://empty.example/")

    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    harness = Harness(refuse, {"img.example": [PUBLIC_V4]})
    with pytest.raises(UrlFetchFailed, match="connect") as info:
        await harness.fetch("http://img.example/")
    assert info.value.code == "url_fetch_failed"


async def test_a_connect_error_falls_back_to_the_next_checked_address() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == PUBLIC_V6:
            raise httpx.ConnectError("network unreachable", request=request)
        return httpx.Response(200, content=b"via v4")

    harness = Harness(handler, {"dual.example": [PUBLIC_V6, PUBLIC_V4]})
    assert await harness.fetch("http://dual.example/") == b"via v4"
    assert [r.url.host for r in harness.requests] == [PUBLIC_V6, PUBLIC_V4]


@pytest.mark.parametrize("internal", ["10.1.2.3", "127.0.0.1", "169.254.169.254", "fd00::1"])
async def test_an_unknown_name_and_an_internal_one_get_the_same_answer(internal: str) -> None:
    """Telling "no such host" from "resolves to a private address" would map our internal DNS for a client."""
    answers = []
    for host in ("internal.example", "unknown.example"):
        harness = Harness(respond(), {"internal.example": [internal]})
        with pytest.raises(UrlNotAllowed) as info:
            await harness.fetch(f"http://{host}/cat.png")
        answers.append((info.value.status_code, info.value.code, info.value.message))
        assert harness.requests == []
    assert answers[0] == answers[1]


async def test_outbound_fetches_are_capped_and_the_rest_wait_their_turn() -> None:
    """However many jobs are accepted, at most max_concurrent_fetches connections go out at once."""
    running = 0
    peak = 0
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return httpx.Response(200, content=b"img")

    harness = Harness(slow, {"img.example": [PUBLIC_V4]}, max_concurrent_fetches=3, timeout_s=30)
    fetches = [asyncio.create_task(harness.fetcher.fetch("http://img.example/")) for _ in range(10)]
    deadline = time.monotonic() + 10
    while len(harness.requests) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    for _ in range(20):  # give the other seven every chance to start if nothing held them back
        await asyncio.sleep(0)
    assert (len(harness.requests), harness.client.in_flight) == (3, 3)
    release.set()
    assert await asyncio.gather(*fetches) == [b"img"] * 10
    await harness.client.aclose()
    assert peak == 3 and harness.client.in_flight == 0


async def test_url_input_can_be_disabled() -> None:
    harness = Harness(respond(), {"img.example": [PUBLIC_V4]}, enabled=False)
    with pytest.raises(UrlNotAllowed, match="disabled"):
        await harness.fetch("http://img.example/")


# ------------------------------------------------------------------------------------------- real sockets

PAYLOAD = bytes(range(256)) * 400  # 100 KiB, every byte value


class Handler_(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive capable, so connection reuse would be possible if we allowed it
    hosts: list[str]

    def do_GET(self) -> None:
        self.hosts.append(self.headers["Host"])
        if self.path == "/img":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/img")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(context: ssl.SSLContext | None = None) -> Iterator[tuple[int, list[str]]]:
    hosts: list[str] = []
    handler = type("RecordingHandler", (Handler_,), {"hosts": hosts})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], hosts
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def local_server() -> Iterator[tuple[int, list[str]]]:
    yield from serve()


class RealFetcher(UrlFetcher):
    """A fetcher on its own client (as ``build_outbound`` gives it one), closed with it."""

    def __init__(self, *, allow_private: bool, max_bytes: int = 1 << 20, **client_options: Any) -> None:
        settings = UrlInputSettings(timeout_s=5.0, allow_private_networks=allow_private)
        self.client = OutboundClient(settings.max_concurrent_fetches, **client_options)
        super().__init__(settings, self.client, max_bytes=max_bytes)

    async def aclose(self) -> None:
        await self.client.aclose()


async def test_a_real_fetch_returns_the_exact_bytes_and_follows_real_redirects(
    local_server: tuple[int, list[str]],
) -> None:
    port, hosts = local_server
    fetcher = RealFetcher(allow_private=True)
    try:
        assert await fetcher.fetch(f"http://127.0.0.1:{port}/img") == PAYLOAD
        assert await fetcher.fetch(f"http://127.0.0.1:{port}/redirect") == PAYLOAD
        # A name through the real system resolver; the server still sees the name in Host.
        assert await fetcher.fetch(f"http://localhost:{port}/redirect") == PAYLOAD
        assert hosts[-2:] == [f"localhost:{port}"] * 2
        with pytest.raises(UrlFetchFailed, match="404"):
            await fetcher.fetch(f"http://127.0.0.1:{port}/nope")
    finally:
        await fetcher.aclose()
    small = RealFetcher(allow_private=True, max_bytes=len(PAYLOAD) - 1)
    try:
        with pytest.raises(TooLarge):
            await small.fetch(f"http://127.0.0.1:{port}/img")
    finally:
        await small.aclose()


async def test_the_same_real_urls_are_refused_without_allow_private_networks(
    local_server: tuple[int, list[str]],
) -> None:
    port, hosts = local_server
    before = len(hosts)
    fetcher = RealFetcher(allow_private=False)
    try:
        for url in (f"http://127.0.0.1:{port}/img", f"http://localhost:{port}/img", f"http://0x7f.1:{port}/img"):
            with pytest.raises(UrlNotAllowed):
                await fetcher.fetch(url)
    finally:
        await fetcher.aclose()
    assert len(hosts) == before  # nothing reached the server


async def test_system_resolver_returns_addresses() -> None:
    assert "127.0.0.1" in await system_resolver("127.0.0.1", 80)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, list[str | None]]]:
    """HTTPS on 127.0.0.1 with a self-signed certificate for the name pinned.test only (not for the IP)."""
    assert shutil.which("openssl"), "openssl makes the test certificate: `make system-deps` installs it"
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=pinned.test",
         "-addext", "subjectAltName=DNS:pinned.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    server_names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    for port, _ in serve(context):
        yield port, cert, server_names


async def test_https_dials_the_ip_but_sends_sni_and_verifies_the_certificate_for_the_name(
    tls_server: tuple[int, Path, list[str | None]],
) -> None:
    port, cert, server_names = tls_server

    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    # A transport with keep-alive on: the fetcher itself must keep a connection from serving a second name.
    transport = httpx.AsyncHTTPTransport(verify=ssl.create_default_context(cafile=str(cert)))
    fetcher = RealFetcher(allow_private=True, resolver=resolve, transport=transport)
    try:
        assert await fetcher.fetch(f"https://pinned.test:{port}/img") == PAYLOAD
        assert await fetcher.fetch(f"https://pinned.test:{port}/redirect") == PAYLOAD
        assert server_names == ["pinned.test"] * 3  # SNI carries the name; one handshake per request
        # Same IP, but a name the certificate does not cover: verification is against the name, so it fails.
        with pytest.raises(UrlFetchFailed, match="TLS"):
            await fetcher.fetch(f"https://other.test:{port}/img")
        assert server_names[-1] == "other.test"
    finally:
        await fetcher.aclose()
