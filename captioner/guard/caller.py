"""Who is calling: what ``ApiGuard`` (guard/api_guard.py) learned about a request, read back by the routes.

- ``api_key_of``: the API key's principal (``key:<id>``) when auth is on, else None. Jobs belong to it (A/B
  assignment never looks at it: serving/assignment.py).
- ``principal_of``: the caller as rate limits and job quotas count it: the key's principal, or the client's
  address (``ip:<address>``, IPv6 by its /64) when auth is off.
- ``is_admin``: the request carried one of ``auth.admin_keys`` (or no keys are configured at all).
"""

from __future__ import annotations

from starlette.types import Scope

from captioner.guard.api_keys import KEY_PRINCIPAL_PREFIX
from captioner.guard.forwarded import client_bucket

PRINCIPAL = "principal"  # scope["state"] keys that ApiGuard sets
ADMIN = "admin"


def api_key_of(scope: Scope) -> str | None:
    value = scope.get("state", {}).get(PRINCIPAL)
    return value if isinstance(value, str) and value.startswith(KEY_PRINCIPAL_PREFIX) else None


def principal_of(scope: Scope) -> str:
    value = scope.get("state", {}).get(PRINCIPAL)
    return value if isinstance(value, str) else client_bucket(scope)


def is_admin(scope: Scope) -> bool:
    return scope.get("state", {}).get(ADMIN) is True
