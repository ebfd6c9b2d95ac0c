"""The keys file (``auth.keys_file``): its YAML read into tenants, every rule checked, nothing else done.

```yaml
tenants:
  - name: web                                   # [A-Za-z0-9_.-], 1..64: a metric label and a Redis key part
    keys: ["sha256:<hex>", "sha256:<hex>"]      # one or more: a key is rotated by listing old and new a while
    scopes: [caption, jobs, feedback]           # admin: variants, drift, anything that describes the models
    rate_per_s: 20                              # optional; absent: rate_limit.per_key_rps; 0: no limit
    burst: 40                                   # optional; absent: rate_limit.burst
    max_running_jobs: 100                       # optional; absent: jobs.max_running_per_principal
    max_images_per_day: 0                       # optional; 0 = unlimited
```

A problem raises ``KeysFileError`` naming the file, the tenant (by position and name) and the field, never a key
or a digest. The file holds digests only: a plain key on disk would be one more copy of the secret.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from captioner.config import ConfigError
from captioner.config.rules import yaml_problem
from captioner.guard.tenants import SCOPES, Tenant, parse_digest

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_FIELDS = ("name", "keys", "scopes", "rate_per_s", "burst", "max_running_jobs", "max_images_per_day")

TenantEntries = list[tuple[Tenant, list[bytes]]]


class KeysFileError(ConfigError):
    """The keys file can't be used; the message is one line naming where."""


def parse_keys_file(text: str, source: str, *, reserved: Sequence[str] = ()) -> TenantEntries:
    """Every tenant of the file's ``text`` with its key digests. ``reserved``: names taken by the config's own key
    lists (``default``, ``admin``), refused here so that one name is one tenant."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # not str(exc): it quotes the line, which may hold a digest
        raise KeysFileError(f"keys file {source}: not valid YAML ({yaml_problem(exc)})") from None
    if not isinstance(document, dict) or set(document) != {"tenants"} or not isinstance(document["tenants"], list):
        raise KeysFileError(f"keys file {source}: must be a mapping with one key, tenants: a list of tenants")
    entries: TenantEntries = []
    seen_digests: dict[bytes, str] = {}
    for index, raw in enumerate(document["tenants"]):
        tenant, digests = _tenant(raw, f"keys file {source}: tenants[{index}]", reserved)
        if any(t.name == tenant.name for t, _ in entries):
            raise KeysFileError(f"keys file {source}: tenants[{index}]: the name {tenant.name!r} is used twice")
        for digest in digests:
            other = seen_digests.setdefault(digest, tenant.name)
            if other != tenant.name or digests.count(digest) > 1:
                raise KeysFileError(f"keys file {source}: tenants[{index}] ({tenant.name}): a key is listed twice")
        entries.append((tenant, digests))
    return entries


def _tenant(raw: Any, where: str, reserved: Sequence[str]) -> tuple[Tenant, list[bytes]]:
    if not isinstance(raw, Mapping):
        raise KeysFileError(f"{where} must be a mapping (name, keys, scopes, ...)")
    unknown = sorted(str(k) for k in raw if k not in _FIELDS)
    if unknown:
        raise KeysFileError(f"{where}: unknown field {unknown[0]} (known: {', '.join(_FIELDS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise KeysFileError(f"{where}.name must be 1 to 64 of A-Z a-z 0-9 _ . -")
    if name in reserved:
        raise KeysFileError(f"{where}.name {name!r} is the tenant of auth.api_keys or auth.admin_keys: choose another")
    where = f"{where} ({name})"
    keys = raw.get("keys")
    if not isinstance(keys, list) or not keys:
        raise KeysFileError(f"{where}.keys must be a non-empty list of 'sha256:<hex>'")
    try:
        digests = [parse_digest(key, f"{where}.keys[{i}]", plain_allowed=False) for i, key in enumerate(keys)]
    except ConfigError as exc:
        raise KeysFileError(str(exc)) from None
    scopes = raw.get("scopes")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise KeysFileError(f"{where}.scopes must be a list of {', '.join(SCOPES)}")
    wrong = [s for s in scopes if s not in SCOPES]
    if wrong:
        raise KeysFileError(f"{where}.scopes: unknown scope {wrong[0]!r} (known: {', '.join(SCOPES)})")
    tenant = Tenant(
        name=name,
        scopes=frozenset(scopes),
        rate_per_s=_number(raw, "rate_per_s", where, integer=False),
        burst=_number(raw, "burst", where),
        max_running_jobs=_number(raw, "max_running_jobs", where),
        max_images_per_day=_number(raw, "max_images_per_day", where) or 0,
    )
    return tenant, digests


def _number(raw: Mapping[str, Any], field: str, where: str, *, integer: bool = True) -> Any:
    """The field's value (None when absent): an integer, or with ``integer=False`` any finite number, >= 0."""
    if field not in raw:
        return None
    value = raw[field]
    ok = isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(value, bool) or not ok or value < 0:
        raise KeysFileError(f"{where}.{field} must be {'an integer' if integer else 'a number'} >= 0, got {value!r}")
    return value if integer else float(value)
