"""Fetch an image from a client-supplied URL without becoming an SSRF proxy into our own network.

Every hop (the URL and each redirect) is parsed, its host resolved once and every address checked. The request
then goes to the checked IP itself: the URL's host becomes the IP while the ``Host`` header and, for https, the
TLS SNI / certificate hostname stay the original name, so no second DNS lookup can be rebound in between.

Policy: URLs with credentials (``user:pass@``) are refused (we never send auth, and they are a classic way to
disguise the host). Numeric IPv4 spellings (``2130706433``, ``0x7f.1``) mean what ``inet_aton`` says; httpx
already rejects dotted forms with leading zeros (``0177.0.0.1``) as malformed. Unspecified, multicast and
broadcast addresses are refused even with ``allow_private_networks``: nothing to fetch lives there.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

import httpx

from captioner import __version__
from captioner.config import UrlInputSettings
from captioner.errors import TooLarge, UrlFetchFailed, UrlNotAllowed

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SCHEMES = {"http": 80, "https": 443}
_REDIRECTS = {301, 302, 303, 307, 308}
# inet_aton's grammar: 1-4 parts, each decimal, octal (leading 0) or hex (0x). Matched strictly first because
# glibc's inet_aton accepts trailing garbage after a space.
_IPV4_SHORTHAND = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}", re.IGNORECASE)
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+", re.IGNORECASE)
_SHARED_SPACE = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT; Python calls it neither private nor global
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses via the OS resolver (off the event loop, as ``loop.getaddrinfo`` does)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _refusal(addr: IPAddress, allow_private: bool) -> str | None:
    """Why ``addr`` may not be fetched from, or None when it may."""
    if isinstance(addr, ipaddress.IPv6Address):
        nat64 = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF) if addr in _NAT64 else None
        embedded = addr.ipv4_mapped or addr.sixtofour or nat64
        if embedded is not None:
            # The packets end up at the IPv4 host (directly, via a 6to4 relay or a NAT64 gateway), so its
            # verdict is the one that counts; the IPv6 prefixes themselves read as reserved to ``ipaddress``.
            reason = _refusal(embedded, allow_private)
            return None if reason is None else f"{reason} (IPv4 embedded in IPv6)"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_multicast:
        return "multicast"
    if addr == _BROADCAST:
        return "broadcast"
    if allow_private:
        return None
    site_local = isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local  # fec0::/10, which is_private misses
    checks = [
        (addr.is_loopback, "loopback"), (addr.is_link_local, "link-local"), (addr.is_private, "private"),
        (addr in _SHARED_SPACE, "shared (carrier-grade NAT)"), (site_local, "site-local"),
        (addr.is_reserved, "reserved"), (not addr.is_global, "non-public"),
    ]  # fmt: skip
    return next((name for hit, name in checks if hit), None)


def check_address(ip: str, *, allow_private: bool) -> None:
    """Raise ``UrlNotAllowed`` unless ``ip`` is an address we may connect to."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise UrlNotAllowed(f"{ip!r} is not an IP address") from None
    reason = _refusal(addr, allow_private)
    if reason is not None:
        # The address itself is left out: echoing what an internal name resolves to would leak our DNS.
        raise UrlNotAllowed(f"the URL's host resolves to a {reason} address, which may not be fetched")


def _literal_ip(host: str) -> str | None:
    """The normalised IP when ``host`` is an IP literal in any spelling, else None (a name to resolve)."""
    if ":" in host:  # only IPv6 literals contain a colon once httpx has split off the port
        try:
            return str(ipaddress.IPv6Address(unquote(host)))
        except ValueError:
            raise UrlNotAllowed("the URL's host is not a valid IPv6 address") from None
    name = host.removesuffix(".")
    if _IPV4_SHORTHAND.fullmatch(name):
        try:
            return socket.inet_ntoa(socket.inet_aton(name))
        except OSError:
            pass
    # Like browsers: a numeric last label means "this is meant as an IPv4 address", so a malformed one is
    # refused rather than handed to a resolver that might read it some other way.
    if _NUMERIC_LABEL.fullmatch(name.rsplit(".", 1)[-1]):
        raise UrlNotAllowed("the URL's host is not a valid IPv4 address")
    return None


@dataclass(frozen=True)
class _Target:
    url: httpx.URL
    host: str  # ASCII (IDNA) name or normalised IP: what we resolve, send as Host and verify TLS against
    port: int
    literal: str | None


def _parse(url: str) -> _Target:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise UrlNotAllowed("the URL is malformed") from None
    if parsed.scheme not in _SCHEMES:
        raise UrlNotAllowed(f"only http and https URLs can be fetched, not {parsed.scheme or 'a relative URL'!r}")
    if parsed.userinfo:
        raise UrlNotAllowed("URLs with credentials (user:password@host) are not accepted")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise UrlNotAllowed("the URL has no host")
    literal = _literal_ip(host)
    if literal is not None:  # the canonical spelling from here on, so Host reads "127.0.0.1", not "0x7f.1"
        try:
            parsed = parsed.copy_with(host=literal)
        except httpx.InvalidURL:  # e.g. an IPv6 zone id, which has no business in a fetchable URL
            raise UrlNotAllowed("the URL's host is not a usable IP address") from None
    port = parsed.port or _SCHEMES[parsed.scheme]
    return _Target(parsed, literal or host, port, literal)


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
        # No keep-alive (see "Connection: close" below); this just stops the pool holding dead sockets.
        transport = transport or httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
        # trust_env=False: an HTTP(S)_PROXY from the environment would do its own DNS and undo the pinning,
        # and .netrc credentials must never be sent to a client-chosen host.
        self._client = httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str) -> bytes:
        """The body at ``url``, or UrlNotAllowed / UrlFetchFailed / TooLarge."""
        if not self._settings.enabled:
            raise UrlNotAllowed("fetching images by URL is disabled on this server")
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                return await self._fetch(url)
        except TimeoutError:
            raise UrlFetchFailed(f"fetching the URL took longer than {self._settings.timeout_s:g}s") from None

    async def _fetch(self, url: str) -> bytes:
        target = _parse(url)
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
                    target = _parse(str(next_url))
                    continue
                if not 200 <= status < 300:
                    raise UrlFetchFailed(f"the URL answered HTTP {status}")
                return await self._read_body(response)
            except httpx.HTTPError as exc:
                raise UrlFetchFailed(f"reading the URL failed ({type(exc).__name__})") from None
            finally:
                await response.aclose()

    async def _resolve(self, target: _Target) -> list[str]:
        if target.literal is not None:
            addresses = [target.literal]
        else:
            try:
                addresses = await self._resolver(target.host, target.port)
            except OSError:
                raise UrlFetchFailed(f"could not resolve the host {target.host!r}") from None
            if not addresses:
                raise UrlFetchFailed(f"the host {target.host!r} has no addresses")
        # Every address must pass, not just one: we may connect to any of them below.
        for address in addresses:
            check_address(address, allow_private=self._settings.allow_private_networks)
        return list(dict.fromkeys(addresses))

    async def _send(self, target: _Target, addresses: list[str]) -> httpx.Response:
        """Send the request to the first checked address that accepts a connection."""
        headers = {
            "Host": target.url.netloc.decode("ascii"),  # IDNA host plus any non-default port, as httpx sends it
            "User-Agent": f"captioner/{__version__}",
            "Accept": "image/*, */*;q=0.5",
            # Compressed bodies would be inflated chunk by chunk before we could count them (a zip bomb).
            "Accept-Encoding": "identity",
            # Never reuse a connection, whatever the transport: pools are keyed by IP, so a TLS connection
            # verified for one name could otherwise carry a request for another name on the same IP.
            "Connection": "close",
        }
        # sni_hostname makes httpcore send SNI and verify the certificate for the name, not the IP we dial.
        extensions = {"sni_hostname": target.host, "timeout": self._timeout.as_dict()}
        for index, address in enumerate(addresses):
            try:
                # A bare httpx.Request (not client.build_request) so no client cookies or auth are attached.
                request = httpx.Request(
                    "GET", target.url.copy_with(host=address), headers=headers, extensions=extensions
                )
                return await self._client.send(request, stream=True)
            except httpx.ConnectError:
                if index == len(addresses) - 1:
                    raise UrlFetchFailed(f"could not connect to {target.host!r} (connection or TLS failed)") from None
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise UrlFetchFailed(f"fetching the URL failed ({type(exc).__name__})") from None
        raise AssertionError("unreachable: _resolve never returns an empty list")

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
