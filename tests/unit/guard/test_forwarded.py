"""Rate-limit bucket keys from client addresses: IPv4 as is, IPv6 by /64, anything else in one small bucket."""

from __future__ import annotations

import pytest

from captioner.guard.forwarded import UNKNOWN, UNPARSABLE, bucket_for, client_bucket


@pytest.mark.parametrize(
    ("host", "bucket"),
    [
        ("203.0.113.7", "ip:203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "ip:2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "ip:2001:db8:1:2::/64"),  # the same /64: the same bucket
        ("[2001:db8:1:3::1]", "ip:2001:db8:1:3::/64"),
        ("fe80::1%eth0", "ip:fe80::/64"),
        ("::ffff:198.51.100.2", "ip:198.51.100.2"),
        ("not-an-address", UNPARSABLE),
        ("1.2.3.4, 5.6.7.8", UNPARSABLE),
        ("a" * 10_000, UNPARSABLE),
        ("", UNKNOWN),
        (None, UNKNOWN),
    ],
)
def test_buckets(host: str | None, bucket: str) -> None:
    assert bucket_for(host) == bucket


def test_every_key_is_short() -> None:
    for host in ("ffff:" * 7 + "ffff", "255.255.255.255", "x" * 65, "\u00e9" * 64):
        assert len(bucket_for(host)) <= 48


def test_from_the_scope() -> None:
    assert client_bucket({"client": ("2001:db8::5", 1234)}) == "ip:2001:db8::/64"
    assert client_bucket({}) == UNKNOWN
