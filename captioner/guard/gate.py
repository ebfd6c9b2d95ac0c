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
from captioner.guard.api_keys import KEY_PRINCIPAL_PREFIX, ApiKeys
from captioner.guard.rate_limit import RateLimiter


def client_address(scope: Scope) -> str:
    # uvicorn has already replaced this with X-Forwarded-For when the peer is a trusted proxy
    # (--forwarded-allow-ips), so behind nginx each end client gets its own bucket.
    client = scope.get("client")
    return client[0] if client else "unknown"


def key_principal(scope: Scope) -> str | None:
    """The API key's principal ("key:<id>") that ``ApiGuard`` admitted, or None (auth off: an "ip:" one)."""
    value = scope.get("state", {}).get("principal")
    return value if isinstance(value, str) and value.startswith(KEY_PRINCIPAL_PREFIX) else None


class ApiGuard:
    """Sets ``scope["state"]["principal"]`` ("key:<id>" or "ip:<address>") for the routes behind it."""

    def __init__(
        self, app: ASGIApp, *, keys: ApiKeys, limiter: RateLimiter, protects: Callable[[str, str], bool]
    ) -> None:
        self.app = app
        self.protects = protects  # (method, path) -> whether the request must pass the gate
        self.keys = keys
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.protects(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            principal = self.admit(scope)
        except CaptionerError as refused:
            await error_response(refused)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def admit(self, scope: Scope) -> str:
        if self.keys.enabled:
            principal = self.keys.authenticate(Headers(scope=scope).get("authorization"))
        else:
            principal = "ip:" + client_address(scope)
        self.limiter.check(principal)
        return principal
