"""``OutboundClient``: the process's one HTTP client for calls to third parties (URL input, callbacks, webhooks).

Every call, whatever it is for:
- waits for one of ``max_concurrent`` slots (``url_input.max_concurrent_fetches``, shared by every kind of
  call), and only then starts its deadline: waiting for a turn is not calling. A replica can then be made to
  open only that many connections to third parties, however many jobs it accepts;
- is held to the SSRF policy (``policy.py``): the URL parsed, its host resolved once and every address
  checked, the request sent to the checked IP itself, and each redirect hop, when followed, checked the same way;
- ends within ``timeout_s`` all told (DNS, connecting, every redirect hop, the whole reply), so a receiver
  that trickles its answer cannot keep a slot;
- reads at most ``max_reply_bytes`` of a 2xx reply's body (``TooLarge`` past it; with 0 the body is not read)
  and refuses a compressed one, which would be inflated before it could be counted;
- carries no cookies, credentials or proxy settings from the environment, and never reuses a connection.

Errors: ``UrlNotAllowed`` (the policy refused the URL), ``UrlFetchFailed`` (no usable answer in time),
``TooLarge``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx

from captioner import __version__
from captioner.errors import TooLarge, UrlFetchFailed, UrlNotAllowed
from captioner.outbound.policy import Resolver, Target, parse_url, pinned_request, resolve_checked, system_resolver

_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""  # read only for a 2xx reply, and only when the call asked for it

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class OutboundClient:
    """Sends every outbound request of the process; one instance (one connection pool, one cap) per process."""

    def __init__(
        self,
        max_concurrent: int,
        *,
        resolver: Resolver = system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._resolver = resolver
        self._slots = asyncio.Semaphore(max_concurrent)
        self.in_flight = 0
        # No keep-alive (every request says "Connection: close"): the pool only caps connections, never holds
        # dead ones, and a TLS connection verified for one name can never carry a request for another.
        limits = httpx.Limits(max_connections=max_concurrent, max_keepalive_connections=0)
        transport = transport or httpx.AsyncHTTPTransport(limits=limits)
        # trust_env=False: an HTTP(S)_PROXY from the environment would do its own DNS and undo the pinning,
        # and .netrc credentials must never be sent to a client-chosen host.
        self._client = httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(
        self,
        method: str,
        url: str,
        *,
        allow_private: bool,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        max_reply_bytes: int = 0,
        max_redirects: int | None = None,
    ) -> Reply:
        """Send one request (and, with ``max_redirects``, the same request to at most that many redirect hops).

        ``max_redirects=None`` returns a 3xx reply as it is; a number follows up to that many hops and fails
        past them. ``allow_private`` opens private networks to this call only (see ``policy.check_address``).
        """
        async with self._slot():
            try:
                async with asyncio.timeout(timeout_s):
                    return await self._call(
                        method, parse_url(url), allow_private, dict(headers or {}), content, max_reply_bytes,
                        max_redirects,
                    )  # fmt: skip
            except TimeoutError:
                raise UrlFetchFailed(f"the URL took longer than {timeout_s:g}s to answer") from None

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        async with self._slots:
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1

    async def _call(
        self,
        method: str,
        target: Target,
        allow_private: bool,
        headers: dict[str, str],
        content: bytes | None,
        max_reply_bytes: int,
        max_redirects: int | None,
    ) -> Reply:
        hops = 0
        while True:
            addresses = await resolve_checked(target, self._resolver, allow_private=allow_private)
            response = await self._send(method, target, addresses, headers, content)
            try:
                status = response.status_code
                if max_redirects is not None and status in _REDIRECTS:
                    hops += 1
                    if hops > max_redirects:
                        raise UrlFetchFailed(f"too many redirects (at most {max_redirects} allowed)")
                    target = _next_hop(target, response)
                    continue
                if not 200 <= status < 300 or max_reply_bytes == 0:
                    return Reply(status)
                return Reply(status, await _read_body(response, max_reply_bytes))
            except httpx.HTTPError as exc:
                raise UrlFetchFailed(f"reading the URL's answer failed ({type(exc).__name__})") from None
            finally:
                await response.aclose()

    async def _send(
        self, method: str, target: Target, addresses: list[str], headers: dict[str, str], content: bytes | None
    ) -> httpx.Response:
        """Send the request to the first checked address that accepts a connection."""
        all_headers = {
            "User-Agent": f"captioner/{__version__}",
            # Compressed bodies would be inflated chunk by chunk before we could count them (a zip bomb).
            "Accept-Encoding": "identity",
            **headers,
        }
        timeout = httpx.Timeout(None)  # the call's deadline (asyncio.timeout) bounds everything at once
        for index, address in enumerate(addresses):
            try:
                request = pinned_request(method, target, address, headers=all_headers, timeout=timeout, content=content)
                return await self._client.send(request, stream=True)
            except httpx.ConnectError:
                if index == len(addresses) - 1:
                    raise UrlFetchFailed(f"could not connect to {target.host!r} (connection or TLS failed)") from None
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise UrlFetchFailed(f"the request to the URL failed ({type(exc).__name__})") from None
        raise AssertionError("unreachable: resolve_checked never returns an empty list")


def _next_hop(target: Target, response: httpx.Response) -> Target:
    location = response.headers.get("location")
    if not location:
        raise UrlFetchFailed(f"the URL redirected (HTTP {response.status_code}) without a Location header")
    try:
        next_url = target.url.join(location)
    except httpx.InvalidURL:
        raise UrlNotAllowed("the URL redirected to a malformed URL") from None
    return parse_url(str(next_url))


async def _read_body(response: httpx.Response, max_bytes: int) -> bytes:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UrlFetchFailed(f"the URL sent a compressed body (Content-Encoding: {encoding}); send it uncompressed")
    too_large = TooLarge(f"the URL's answer is larger than the limit of {max_bytes} bytes")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    total = 0
    # aiter_bytes, not aiter_raw: identical once Content-Encoding is identity, and it also serves bodies a
    # transport has already buffered.
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > max_bytes:  # Content-Length may be absent or a lie; the stream is what counts
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
