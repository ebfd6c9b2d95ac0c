"""The gate in front of the API (``/api/*`` and ``POST /``): API keys first (401), then the caller's token bucket (429).

It is plain ASGI middleware rather than a check inside each route, so that every API route (captions, jobs,
drift) gets the same rules and a refused request is answered before its body is read. Health, readiness and
metrics stay open: load balancers and Prometheus carry no keys.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from captioner.errors import CaptionerError, error_response
from captioner.guard.api_keys import ApiKeys
from captioner.guard.caller import ADMIN, PRINCIPAL
from captioner.guard.forwarded import client_bucket
from captioner.guard.shared_limiter import SharedRateLimiter


class ApiGuard:
    """Sets who is calling (``guard/caller.py``: the principal, and whether it is an admin) for the routes behind it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: ApiKeys,
        limiter: SharedRateLimiter,
        protects: Callable[[str, str], bool],
        admin_keys: ApiKeys | None = None,
    ) -> None:
        self.app = app
        self.protects = protects  # (method, path) -> whether the request must pass the gate
        self.keys = keys
        self.limiter = limiter
        # Admin keys are API keys too (``keys`` holds them); this set only tells which ones are admins.
        self.admin_keys = admin_keys if admin_keys is not None else ApiKeys([])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.protects(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            principal = await self.admit(scope)
        except CaptionerError as refused:
            await error_response(refused)(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[PRINCIPAL] = principal
        # No keys at all (a loopback development server): everything is open, operator endpoints too.
        state[ADMIN] = not self.keys.enabled or self.admin_keys.matches(Headers(scope=scope).get("authorization"))
        await self.app(scope, receive, send)

    async def admit(self, scope: Scope) -> str:
        if self.keys.enabled:
            principal = self.keys.authenticate(Headers(scope=scope).get("authorization"))
        else:
            principal = client_bucket(scope)  # "ip:<address>", an IPv6 client by its /64
        if self.limiter.enabled:  # off: no call at all; on: a Redis round trip only when limits are shared
            await self.limiter.check(principal)
        return principal
