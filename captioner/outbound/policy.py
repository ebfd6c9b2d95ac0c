"""Where the server may connect on a client's behalf: the SSRF policy, as plain functions.

``parse_url`` refuses what no hop may be (other schemes, credentials, malformed or numeric-trick hosts, host
names no resolver could look up); ``resolve_checked`` resolves a host once and checks every address;
``pinned_request`` builds a request that goes to the checked IP itself while the ``Host`` header and the TLS
SNI / certificate name stay the original name, so no second DNS lookup can be rebound in between.
``outbound/client.py`` applies them to every outbound call: URL input, job callbacks and webhooks.

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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx

from captioner.errors import UrlNotAllowed

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = {"http": 80, "https": 443}
# inet_aton's grammar: 1-4 parts, each decimal, octal (leading 0) or hex (0x). Matched strictly first because
# glibc's inet_aton accepts trailing garbage after a space.
_IPV4_SHORTHAND = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}", re.IGNORECASE)
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+", re.IGNORECASE)
_SHARED_SPACE = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT; Python calls it neither private nor global
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
# A DNS label as resolvers accept it: letters, digits, hyphens, and underscores (service names such as _dmarc).
_LABEL = re.compile(r"[a-z0-9_-]{1,63}", re.IGNORECASE)


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses via the OS resolver (off the event loop, as ``loop.getaddrinfo`` does)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _refusal(addr: IPAddress, allow_private: bool) -> str | None:
    """Why ``addr`` may not be connected to, or None when it may."""
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


def host_problem(host: str) -> str | None:
    """Why the host name ``host`` (ASCII, as httpx spells it) could never be looked up, or None when it could.

    A name is at most 253 characters (one trailing dot aside) of dot-separated labels, each 1 to 63 letters,
    digits, hyphens or underscores. IP literals are not names: ``parse_url`` reads those before asking this.
    """
    if not host:
        return "is empty"
    name = host.removesuffix(".")
    if len(name) > 253:
        return "is longer than 253 characters"
    for label in name.split("."):
        if not label:
            return "has an empty label (two dots in a row, or a leading dot)"
        if len(label) > 63:
            return "has a label longer than 63 characters"
        if not _LABEL.fullmatch(label):
            return "has characters a host name cannot have"
    return None


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
class Target:
    url: httpx.URL
    host: str  # ASCII (IDNA) name or normalised IP: what we resolve, send as Host and verify TLS against
    port: int
    literal: str | None


def parse_url(url: str) -> Target:
    """The URL's target, or ``UrlNotAllowed`` for what no hop may be."""
    if isinstance(url, str) and not url.strip():
        raise UrlNotAllowed("the URL is empty")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise UrlNotAllowed("the URL is malformed") from None
    if parsed.scheme not in SCHEMES:
        raise UrlNotAllowed(f"only http and https URLs can be fetched, not {parsed.scheme or 'a relative URL'!r}")
    if parsed.userinfo:
        raise UrlNotAllowed("URLs with credentials (user:password@host) are not accepted")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise UrlNotAllowed("the URL has no host")
    literal = _literal_ip(host)
    problem = host_problem(host) if literal is None else None
    if problem is not None:  # refused here: getaddrinfo would raise UnicodeError for some of these
        raise UrlNotAllowed(f"the URL's host {problem}")
    if literal is not None:  # the canonical spelling from here on, so Host reads "127.0.0.1", not "0x7f.1"
        try:
            parsed = parsed.copy_with(host=literal)
        except httpx.InvalidURL:  # e.g. an IPv6 zone id, which has no business in a fetchable URL
            raise UrlNotAllowed("the URL's host is not a usable IP address") from None
    port = parsed.port or SCHEMES[parsed.scheme]
    return Target(parsed, literal or host, port, literal)


NAME_REFUSED = "the URL's host does not resolve to a public address that may be fetched"


async def resolve_checked(target: Target, resolver: Resolver, *, allow_private: bool) -> list[str]:
    """The target's addresses, each one allowed by the policy (else ``UrlNotAllowed``), without duplicates."""
    if target.literal is not None:
        check_address(target.literal, allow_private=allow_private)  # an IP the client wrote: say what it is
        return [target.literal]
    # A name that does not resolve and one that resolves to a refused address get the same answer: telling them
    # apart would let a client map our internal DNS names.
    try:
        addresses = await resolver(target.host, target.port)
    except (OSError, UnicodeError):  # UnicodeError: the IDNA codec refusing a name parse_url let through
        raise UrlNotAllowed(NAME_REFUSED) from None
    if not addresses:
        raise UrlNotAllowed(NAME_REFUSED)
    # Every address must pass, not just one: we may connect to any of them.
    for address in addresses:
        try:
            check_address(address, allow_private=allow_private)
        except UrlNotAllowed:
            raise UrlNotAllowed(NAME_REFUSED) from None
    return list(dict.fromkeys(addresses))


def pinned_request(
    method: str,
    target: Target,
    address: str,
    *,
    headers: Mapping[str, str],
    timeout: httpx.Timeout,
    content: bytes | None = None,
) -> httpx.Request:
    """A request to ``address`` (already checked) that still names ``target.host`` in Host and TLS."""
    # Never reuse a connection, whatever the transport: pools are keyed by IP, so a TLS connection verified for
    # one name could otherwise carry a request for another name on the same IP.
    all_headers = {"Host": target.url.netloc.decode("ascii"), "Connection": "close", **headers}
    # sni_hostname makes httpcore send SNI and verify the certificate for the name, not the IP we dial.
    extensions: dict[str, Any] = {"sni_hostname": target.host, "timeout": timeout.as_dict()}
    # A bare httpx.Request (not client.build_request) so no client cookies or auth are attached.
    return httpx.Request(
        method, target.url.copy_with(host=address), headers=all_headers, content=content, extensions=extensions
    )
