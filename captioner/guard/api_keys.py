"""API-key authentication: ``Authorization: Bearer <key>`` checked against ``auth.api_keys``.

Each configured entry is either a plain key or ``sha256:<64 hex chars>``, the SHA-256 of the key (so the
config file need not hold the secret). Either way only the digests are kept in memory. A presented key is
hashed and compared with every configured digest using ``hmac.compare_digest``, with no early exit, so the
time taken does not reveal whether or which key matched.

Keys never appear in logs or error messages. A successful check returns a principal id, ``key:`` plus the
first 12 hex chars of the key's SHA-256: stable per key, safe to log, and used as the rate-limit bucket key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from captioner.config import AuthSettings, ConfigError
from captioner.errors import Unauthorized

_DIGEST_PREFIX = "sha256:"
_HEX = frozenset("0123456789abcdefABCDEF")
_PRINCIPAL_HEX_CHARS = 12


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


KEY_PRINCIPAL_PREFIX = "key:"


def principal_id(digest: bytes) -> str:
    """The loggable name of the key whose SHA-256 is ``digest``."""
    return KEY_PRINCIPAL_PREFIX + digest.hex()[:_PRINCIPAL_HEX_CHARS]


class ApiKeys:
    """The configured API keys, as SHA-256 digests. No entries means authentication is off."""

    def __init__(self, entries: Sequence[str], *, setting: str = "auth.api_keys") -> None:
        if isinstance(entries, str):  # a lone string would otherwise be read as one key per character
            raise TypeError("api keys must be a sequence of strings, not a single string")
        digests: list[bytes] = []
        for index, entry in enumerate(entries):
            # Messages name the entry's position only: the entry may be a secret.
            where = f"config: {setting}[{index}]"
            if not isinstance(entry, str):
                raise ConfigError(f"{where} must be a string")
            if entry.startswith(_DIGEST_PREFIX):
                hex_part = entry[len(_DIGEST_PREFIX) :]
                if len(hex_part) != 64 or not _HEX.issuperset(hex_part):
                    raise ConfigError(f"{where} must be '{_DIGEST_PREFIX}' followed by exactly 64 hex characters")
                digests.append(bytes.fromhex(hex_part))
            else:
                if not entry.strip():
                    raise ConfigError(f"{where} is empty")
                if entry != entry.strip():
                    # The header value is stripped, so such a key could never match.
                    raise ConfigError(f"{where} has leading or trailing whitespace")
                digests.append(_digest(entry))
        self._digests: tuple[bytes, ...] = tuple(digests)

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> ApiKeys:
        """Every key that may call the API: ``auth.api_keys`` and ``auth.admin_keys``."""
        cls(auth.admin_keys, setting="auth.admin_keys")  # an error names the list the bad entry is in
        return cls([*auth.api_keys, *auth.admin_keys])

    @classmethod
    def admins(cls, auth: AuthSettings) -> ApiKeys:
        return cls(auth.admin_keys, setting="auth.admin_keys")

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:  # never show digests either: a digest of a weak key can be brute-forced
        return f"ApiKeys(<{len(self._digests)} keys>)"

    def matches(self, authorization_header: str | None) -> bool:
        """True when the header carries one of these keys (no error either way)."""
        if not self._digests:
            return False
        try:
            self.authenticate(authorization_header)
        except Unauthorized:
            return False
        return True

    def authenticate(self, authorization_header: str | None) -> str:
        """The principal id for a valid ``Bearer`` header; raises ``Unauthorized`` otherwise.

        With authentication disabled every request is let through as principal ``"anonymous"``; callers
        normally check ``enabled`` first and key rate limits by client address instead.
        """
        if not self._digests:
            return "anonymous"
        if authorization_header is None:
            raise Unauthorized("missing Authorization header (expected: Bearer <key>)")
        scheme, _, credentials = authorization_header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized("the Authorization header must use the Bearer scheme (Bearer <key>)")
        key = credentials.strip()
        if not key:
            raise Unauthorized("empty API key in the Authorization header")
        presented = _digest(key)
        matched = False
        for digest in self._digests:  # every digest, no early exit: constant time in which one matched
            matched |= hmac.compare_digest(presented, digest)
        if not matched:
            raise Unauthorized("invalid API key")
        return principal_id(presented)
