"""Fetch an image from a client-supplied URL without becoming an SSRF proxy into our own network.

Every hop (the URL and each redirect) is parsed, its host resolved once and every address checked, and the
request then goes to the checked IP itself (``outbound/policy.py`` holds the policy, shared with job
callbacks). Compressed bodies are refused and the body is counted as it streams, against the byte cap.

At most ``url_input.max_concurrent_fetches`` outbound requests (fetches and callback POSTs) run at once per
process (a semaphore, and the same ``max_connections`` on httpx's pool); the rest wait their turn before their
timeout starts. A replica can then be made to open only that many connections to third parties, however many
jobs it accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx

from captioner import __version__
from captioner.config import UrlInputSettings
from captioner.errors import TooLarge, UrlFetchFailed, UrlNotAllowed
from captioner.outbound.policy import Resolver as Resolver  # re-exported (used from here before the move)
from captioner.outbound.policy import Target, parse_url, pinned_request, resolve_checked
from captioner.outbound.policy import check_address as check_address
from captioner.outbound.policy import system_resolver as system_resolver

_REDIRECTS = {301, 302, 303, 307, 308}


class UrlFetcher:
    """Fetches URLs for the service; one instance (one connection pool) per process."""

    def __init__(
        self,
        settings: UrlInputSettings,
        *,
        max_bytes: int,
        resolver: Resolver = system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._max_bytes = max_bytes
        self._resolver = resolver
        self._timeout = httpx.Timeout(settings.timeout_s)
        self._slots = asyncio.Semaphore(settings.max_concurrent_fetches)
        self.in_flight = 0
        # No keep-alive (see "Connection: close" below): the pool only caps connections, and never holds dead ones.
        limits = httpx.Limits(max_connections=settings.max_concurrent_fetches, max_keepalive_connections=0)
        transport = transport or httpx.AsyncHTTPTransport(limits=limits)
        # trust_env=False: an HTTP(S)_PROXY from the environment would do its own DNS and undo the pinning,
        # and .netrc credentials must never be sent to a client-chosen host.
        self._client = httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str) -> bytes:
        """The body at ``url``, or UrlNotAllowed / UrlFetchFailed / TooLarge."""
        if not self._settings.enabled:
            raise UrlNotAllowed("fetching images by URL is disabled on this server")
        async with self._slot():  # waiting here is not fetching: the timeout starts once a slot is ours
            try:
                async with asyncio.timeout(self._settings.timeout_s):
                    return await self._fetch(url)
            except TimeoutError:
                raise UrlFetchFailed(f"fetching the URL took longer than {self._settings.timeout_s:g}s") from None

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        async with self._slots:
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1

    async def post_json(self, url: str, body: bytes) -> int:
        """POST ``body`` (JSON) to ``url`` under the same policy as ``fetch``; redirects are not followed.

        Returns the HTTP status; raises UrlNotAllowed (the policy refused the host) or UrlFetchFailed.
        """
        try:
            async with self._slot(), asyncio.timeout(self._settings.timeout_s):
                target = parse_url(url)
                response = await self._send(target, await self._resolve(target), method="POST", content=body)
                await response.aclose()
                return response.status_code
        except TimeoutError:
            raise UrlFetchFailed(f"the POST took longer than {self._settings.timeout_s:g}s") from None

    async def _fetch(self, url: str) -> bytes:
        target = parse_url(url)
        redirects = 0
        while True:
            addresses = await self._resolve(target)
            response = await self._send(target, addresses)
            try:
                status = response.status_code
                if status in _REDIRECTS:
                    location = response.headers.get("location")
                    if not location:
                        raise UrlFetchFailed(f"the URL redirected (HTTP {status}) without a Location header")
                    redirects += 1
                    if redirects > self._settings.max_redirects:
                        raise UrlFetchFailed(f"too many redirects (at most {self._settings.max_redirects} allowed)")
                    try:
                        next_url = target.url.join(location)
                    except httpx.InvalidURL:
                        raise UrlNotAllowed("the URL redirected to a malformed URL") from None
                    target = parse_url(str(next_url))
                    continue
                if not 200 <= status < 300:
                    raise UrlFetchFailed(f"the URL answered HTTP {status}")
                return await self._read_body(response)
            except httpx.HTTPError as exc:
                raise UrlFetchFailed(f"reading the URL failed ({type(exc).__name__})") from None
            finally:
                await response.aclose()

    async def _resolve(self, target: Target) -> list[str]:
        return await resolve_checked(target, self._resolver, allow_private=self._settings.allow_private_networks)

    async def _send(
        self, target: Target, addresses: list[str], *, method: str = "GET", content: bytes | None = None
    ) -> httpx.Response:
        """Send the request to the first checked address that accepts a connection."""
        headers = {
            "User-Agent": f"captioner/{__version__}",
            "Accept": "image/*, */*;q=0.5",
            # Compressed bodies would be inflated chunk by chunk before we could count them (a zip bomb).
            "Accept-Encoding": "identity",
        }
        if content is not None:
            headers.update({"Accept": "*/*", "Content-Type": "application/json"})
        for index, address in enumerate(addresses):
            try:
                request = pinned_request(
                    method, target, address, headers=headers, timeout=self._timeout, content=content
                )
                return await self._client.send(request, stream=True)
            except httpx.ConnectError:
                if index == len(addresses) - 1:
                    raise UrlFetchFailed(f"could not connect to {target.host!r} (connection or TLS failed)") from None
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise UrlFetchFailed(f"fetching the URL failed ({type(exc).__name__})") from None
        raise AssertionError("unreachable: resolve_checked never returns an empty list")

    async def _read_body(self, response: httpx.Response) -> bytes:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise UrlFetchFailed(f"the URL sent a compressed body (Content-Encoding: {encoding}); send it uncompressed")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise TooLarge(f"the image at the URL is larger than {self._max_bytes} bytes")
        chunks: list[bytes] = []
        total = 0
        # aiter_bytes, not aiter_raw: identical once Content-Encoding is identity, and it also serves bodies a
        # transport has already buffered.
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > self._max_bytes:  # Content-Length may be absent or a lie; the stream is what counts
                raise TooLarge(f"the image at the URL is larger than {self._max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
