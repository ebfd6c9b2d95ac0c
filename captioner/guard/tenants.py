"""Tenants: who a key belongs to, what it may do, and its own limits. ``TenantKeys`` answers "which tenant sent
this ``Authorization`` header?" and can be swapped whole while requests run (a keys-file reload).

A tenant comes from the keys file (``auth.keys_file``, parsed by ``keys_file.py``), or from the config's flat lists:
``auth.api_keys`` is tenant ``default`` (scopes caption, jobs, feedback) and ``auth.admin_keys`` tenant ``admin``
(every scope), each with the config's rate limit and job quota. Only SHA-256 digests of keys are held; a presented
key is hashed and compared with every digest (``hmac.compare_digest``, no early exit), so the time taken says
nothing about which key, if any, matched. Keys and digests never appear in logs or messages: a tenant is named.

Who a caller is for rate limits, job quotas and job ownership (its *principal*): a keys-file tenant as a whole
(``tenant:<name>``: its keys share one bucket, so rotating a key changes nothing), but each key of the config's
lists on its own (``key:<first 12 hex of its SHA-256>``), as before tenants existed: several clients given
``auth.api_keys`` keep a limit each.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from captioner.config import AuthSettings, ConfigError
from captioner.errors import Unauthorized

CAPTION, JOBS, FEEDBACK, ADMIN = "caption", "jobs", "feedback", "admin"
SCOPES = (CAPTION, JOBS, FEEDBACK, ADMIN)
DEFAULT_TENANT = "default"  # auth.api_keys
ADMIN_TENANT = "admin"  # auth.admin_keys
TENANT_PRINCIPAL_PREFIX = "tenant:"
DIGEST_PREFIX = "sha256:"
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True)
class Tenant:
    """One tenant. A limit left ``None`` is the config's (``rate_limit.*``, ``jobs.max_running_per_principal``)."""

    name: str
    scopes: frozenset[str] = frozenset(SCOPES)
    rate_per_s: float | None = None  # 0: no rate limit for this tenant
    burst: int | None = None
    max_running_jobs: int | None = None
    max_images_per_day: int = 0  # 0: unlimited

    @property
    def principal(self) -> str:
        """What rate limits, job quotas, job ownership and the access log know the tenant by."""
        return TENANT_PRINCIPAL_PREFIX + self.name

    def allows(self, scope: str | None) -> bool:
        """Whether this tenant may call an endpoint that needs ``scope`` (None: any known key may)."""
        return scope is None or scope in self.scopes


KEY_PRINCIPAL_PREFIX = "key:"
_PRINCIPAL_HEX_CHARS = 12


@dataclass(frozen=True)
class Caller:
    """An authenticated request's tenant, and its principal (see the module's docstring)."""

    tenant: Tenant
    principal: str


def is_key_principal(principal: object) -> bool:
    """Whether ``principal`` names a key holder (not a client address: auth off)."""
    return isinstance(principal, str) and principal.startswith((KEY_PRINCIPAL_PREFIX, TENANT_PRINCIPAL_PREFIX))


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def parse_digest(entry: object, where: str, *, plain_allowed: bool) -> bytes:
    """An entry's SHA-256: ``sha256:<64 hex>``, or (config lists only) the plain key. ``where`` names the entry by
    its position: the entry itself may be a secret."""
    if not isinstance(entry, str):
        raise ConfigError(f"{where} must be a string")
    if entry.startswith(DIGEST_PREFIX):
        hex_part = entry[len(DIGEST_PREFIX) :]
        if len(hex_part) != 64 or not _HEX.issuperset(hex_part):
            raise ConfigError(f"{where} must be '{DIGEST_PREFIX}' followed by exactly 64 hex characters")
        return bytes.fromhex(hex_part)
    if not plain_allowed:
        raise ConfigError(f"{where} must be '{DIGEST_PREFIX}<hex of the key>' (the file holds no plain keys)")
    if not entry.strip():
        raise ConfigError(f"{where} is empty")
    if entry != entry.strip():  # the header value is stripped, so such a key could never match
        raise ConfigError(f"{where} has leading or trailing whitespace")
    return key_digest(entry)


def key_principal(digest: bytes) -> str:
    """The loggable name of the config-list key whose SHA-256 is ``digest``."""
    return KEY_PRINCIPAL_PREFIX + digest.hex()[:_PRINCIPAL_HEX_CHARS]


def config_tenants(auth: AuthSettings) -> list[tuple[Tenant, list[bytes]]]:
    """``auth.api_keys`` as tenant ``default`` and ``auth.admin_keys`` as tenant ``admin`` (when not empty)."""
    found: list[tuple[Tenant, list[bytes]]] = []
    lists = (
        ("auth.api_keys", auth.api_keys, Tenant(DEFAULT_TENANT, frozenset({CAPTION, JOBS, FEEDBACK}))),
        ("auth.admin_keys", auth.admin_keys, Tenant(ADMIN_TENANT)),
    )
    for setting, entries, tenant in lists:
        digests = [parse_digest(e, f"config: {setting}[{i}]", plain_allowed=True) for i, e in enumerate(entries)]
        if digests:
            found.append((tenant, digests))
    return found


def _caller(tenant: Tenant, digest: bytes) -> Caller:
    per_key = tenant.name in (DEFAULT_TENANT, ADMIN_TENANT)  # the config's lists: a principal per key
    return Caller(tenant, key_principal(digest) if per_key else tenant.principal)


class TenantKeys:
    """The keys in force, each with its tenant; ``enabled`` once any source of keys is configured."""

    def __init__(self, entries: Iterable[tuple[Tenant, Sequence[bytes]]] = (), *, enabled: bool | None = None) -> None:
        self._pairs: tuple[tuple[bytes, Caller], ...] = ()
        self.tenants: dict[str, Tenant] = {}
        self.replace(entries)
        # With a keys file, auth is on even while the file names no tenant: nobody gets in, rather than everybody.
        self.enabled = bool(self._pairs) if enabled is None else enabled

    def replace(self, entries: Iterable[tuple[Tenant, Sequence[bytes]]]) -> None:
        """Put ``entries`` in force at once (one assignment: a request sees the old keys or the new, never a mix)."""
        entries = list(entries)
        pairs = tuple((digest, _caller(tenant, digest)) for tenant, digests in entries for digest in digests)
        self._pairs, self.tenants = pairs, {tenant.name: tenant for tenant, _ in entries}

    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:  # never digests: a digest of a weak key can be brute-forced
        return f"TenantKeys(<{len(self._pairs)} keys of {len(self.tenants)} tenants>)"

    def authenticate(self, authorization_header: str | None) -> Caller:
        """The tenant and principal of a valid ``Bearer`` key; ``Unauthorized`` (401) otherwise."""
        if authorization_header is None:
            raise Unauthorized("missing Authorization header (expected: Bearer <key>)")
        scheme, _, credentials = authorization_header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized("the Authorization header must use the Bearer scheme (Bearer <key>)")
        key = credentials.strip()
        if not key:
            raise Unauthorized("empty API key in the Authorization header")
        presented = key_digest(key)
        found: Caller | None = None
        for digest, caller in self._pairs:  # every digest, no early exit
            if hmac.compare_digest(presented, digest):
                found = caller
        if found is None:
            raise Unauthorized("invalid API key")
        return found
