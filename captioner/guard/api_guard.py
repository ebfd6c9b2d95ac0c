"""The gate in front of the API (``/api/*`` and ``POST /``): the key (401), its tenant's scope for the endpoint
(403), then the caller's token bucket (429).

It is plain ASGI middleware rather than a check inside each route, so that every API route (captions, jobs,
drift) gets the same rules and a refused request is answered before its body is read. Health, readiness and
metrics stay open: load balancers and Prometheus carry no keys.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from captioner.errors import CaptionerError, Forbidden, error_response
from captioner.guard.caller import PRINCIPAL, TENANT
from captioner.guard.forwarded import client_bucket
from captioner.guard.shared_limiter import RateLimit, SharedRateLimiter
from captioner.guard.tenants import Caller, TenantKeys


def rate_limit_of(caller: Caller | None, default: RateLimit) -> RateLimit:
    """The caller's tenant's own rate and burst where the keys file sets them, else the config's."""
    if caller is None:
        return default
    tenant = caller.tenant
    rate = default.rate_per_s if tenant.rate_per_s is None else tenant.rate_per_s
    return RateLimit(rate, default.burst if tenant.burst is None else tenant.burst)


def scope_refusal(caller: Caller, needed: str | None) -> Forbidden | None:
    """403 for a known key whose tenant lacks the endpoint's scope; None when it may call it."""
    if caller.tenant.allows(needed):
        return None
    return Forbidden(f"this key's tenant ({caller.tenant.name}) has no '{needed}' scope for this endpoint")


class ApiGuard:
    """Sets who is calling (``guard/caller.py``: the principal and the tenant) for the routes behind it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: TenantKeys,
        limiter: SharedRateLimiter,
        protects: Callable[[str, str], bool],
        scope_of: Callable[[Scope], str | None] = lambda scope: None,
    ) -> None:
        self.app = app
        self.protects = protects  # (method, path) -> whether the request must pass the gate
        self.scope_of = scope_of  # the request -> the scope its endpoint needs (None: any key)
        self.keys = keys
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.protects(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            caller = await self.admit(scope)
        except CaptionerError as refused:
            await error_response(refused)(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[PRINCIPAL] = caller.principal if caller is not None else client_bucket(scope)
        state[TENANT] = caller.tenant if caller is not None else None  # None: no keys at all, everything is open
        await self.app(scope, receive, send)

    async def admit(self, scope: Scope) -> Caller | None:
        """The caller (None with auth off), or the refusal: 401, 403, 429 (or 503 when limits can't be checked)."""
        caller: Caller | None = None
        if self.keys.enabled:
            caller = self.keys.authenticate(Headers(scope=scope).get("authorization"))
            refusal = scope_refusal(caller, self.scope_of(scope))
            if refusal is not None:
                raise refusal
            principal = caller.principal
        else:
            principal = client_bucket(scope)  # "ip:<address>", an IPv6 client by its /64
        # A limit of rate 0 makes no call at all; else a Redis round trip only when limits are shared.
        await self.limiter.check(principal, rate_limit_of(caller, self.limiter.default))
        return caller
