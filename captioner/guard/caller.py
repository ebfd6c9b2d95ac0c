"""Who is calling: what ``ApiGuard`` (guard/api_guard.py) learned about a request, read back by the routes.

- ``api_key_of``: the key holder's principal (``tenant:<name>`` for a keys-file tenant, ``key:<id>`` for a key of
  the config's lists) when auth is on, else None. Jobs belong to it (A/B assignment never looks at it:
  serving/assignment.py).
- ``principal_of``: the caller as rate limits and job quotas count it: that principal, or the client's address
  (``ip:<address>``, IPv6 by its /64) when auth is off.
- ``tenant_of``: the caller's tenant (name, scopes, limits: guard/tenants.py); None when auth is off.
"""

from __future__ import annotations

from starlette.types import Scope

from captioner.guard.forwarded import client_bucket
from captioner.guard.tenants import Tenant, is_key_principal

PRINCIPAL = "principal"  # scope["state"] keys that ApiGuard sets
TENANT = "tenant"


def api_key_of(scope: Scope) -> str | None:
    value = scope.get("state", {}).get(PRINCIPAL)
    return value if is_key_principal(value) else None


def principal_of(scope: Scope) -> str:
    value = scope.get("state", {}).get(PRINCIPAL)
    return value if isinstance(value, str) else client_bucket(scope)


def tenant_of(scope: Scope) -> Tenant | None:
    value = scope.get("state", {}).get(TENANT)
    return value if isinstance(value, Tenant) else None
