"""Who a request comes from, as a bounded rate-limit bucket key: ``ip:<IPv4>`` or ``ip:<IPv6 /64 network>``.

The address is uvicorn's ``scope["client"]``. uvicorn replaces the peer's address with the one in
``X-Forwarded-For`` only when the peer is in ``server.forwarded_allow_ips`` (the reverse proxy; loopback by
default), so a client talking to the server directly cannot name its own bucket. What a trusted proxy
forwards is still text, so it is parsed here: anything that is not an IP address shares the one bucket
``ip:unparsable`` instead of getting a fresh one per spelling, and keys stay short whatever the header held.

IPv6: one subscriber usually gets a whole /64 and can pick any of its 2^64 addresses, so a bucket per address
would be a bucket per request. The /64 is the unit, as for most IPv6 rate limiters. IPv4-mapped IPv6
addresses (``::ffff:1.2.3.4``) count as their IPv4 address.
"""

from __future__ import annotations

import ipaddress

from starlette.types import Scope

IPV6_PREFIX = 64
UNPARSABLE = "ip:unparsable"
UNKNOWN = "ip:unknown"


def bucket_for(host: str | None) -> str:
    """The bucket key of a client address (as text)."""
    if not host:
        return UNKNOWN
    text = host.strip()
    if len(text) > 64:  # longer than any spelling of an IP address (a scoped IPv6 one included)
        return UNPARSABLE
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # a zone id (fe80::1%eth0) names no other client
    except ValueError:
        return UNPARSABLE
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"ip:{address.ipv4_mapped}"
        network = ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False)
        return f"ip:{network}"
    return f"ip:{address}"


def client_bucket(scope: Scope) -> str:
    client = scope.get("client")
    return bucket_for(client[0] if client else None)
