"""Which scope each endpoint needs, and the gate's decisions from a caller's tenant: 403 without the scope, the
tenant's own rate limit where it sets one."""

from __future__ import annotations

from typing import Any

import pytest

from captioner.guard.api_guard import rate_limit_of, scope_refusal
from captioner.guard.shared_limiter import RateLimit
from captioner.guard.tenants import ADMIN, CAPTION, FEEDBACK, JOBS, SCOPES, Caller, Tenant
from captioner.http.paths import scope_of


def request(method: str, path: str, query: bytes = b"") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "query_string": query}


@pytest.mark.parametrize(
    ("method", "path", "query", "needed"),
    [
        ("POST", "/api/v1/caption", b"", CAPTION),
        ("POST", "/api/v1/caption", b"num_captions=2&mode=async", JOBS),
        ("POST", "/api/v1/caption", b"mode=sync", CAPTION),
        ("GET", "/api/v1/caption/" + "a" * 32, b"", JOBS),
        ("POST", "/", b"", CAPTION),
        ("POST", "/api/v1/feedback", b"", FEEDBACK),
        ("GET", "/api/v1/variants", b"", ADMIN),  # model names, revisions, weights: internals
        ("GET", "/api/v1/drift", b"", ADMIN),
        ("GET", "/api/v1/drift/reference", b"", ADMIN),
        ("GET", "/api/v1/nothing-here", b"", None),  # any key: it is a 404
    ],
)
def test_each_endpoint_needs_its_scope(method: str, path: str, query: bytes, needed: str | None) -> None:
    assert scope_of(request(method, path, query)) == needed


def test_a_known_key_without_the_scope_is_forbidden_naming_the_tenant_and_scope() -> None:
    caller = Caller(Tenant("web", frozenset({CAPTION, JOBS})), "tenant:web")
    assert scope_refusal(caller, CAPTION) is None and scope_refusal(caller, None) is None
    refused = scope_refusal(caller, ADMIN)
    assert refused is not None and (refused.status_code, refused.code) == (403, "forbidden")
    assert "web" in refused.message and "admin" in refused.message
    assert scope_refusal(Caller(Tenant("ops", frozenset(SCOPES)), "tenant:ops"), ADMIN) is None


def test_a_tenant_has_its_own_rate_where_the_file_sets_one_else_the_configs() -> None:
    default = RateLimit(5.0, 10)
    assert rate_limit_of(None, default) == default  # auth off: by client address, the config's limit
    assert rate_limit_of(Caller(Tenant("a"), "tenant:a"), default) == default
    assert rate_limit_of(Caller(Tenant("b", rate_per_s=2.0), "tenant:b"), default) == RateLimit(2.0, 10)
    fast = rate_limit_of(Caller(Tenant("c", rate_per_s=50.0, burst=100), "tenant:c"), default)
    assert fast == RateLimit(50.0, 100) and fast.capacity == 100
    assert rate_limit_of(Caller(Tenant("d", rate_per_s=0.0), "tenant:d"), default).rate_per_s == 0  # unlimited
    assert RateLimit(2.5, 0).capacity == 3
