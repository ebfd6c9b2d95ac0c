"""``GET /api/v1/drift`` (scores and their context) and ``GET /api/v1/drift/reference`` (for save-reference).

Both summarise every caller's traffic, so with auth on they need an admin key (``auth.admin_keys``): any
other key gets 403 ``forbidden``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from captioner.errors import Forbidden, NotFound
from captioner.guard.caller import is_admin
from captioner.http.responses import FastJSONResponse
from captioner.runtime.state import runtime_of


def _require_admin(request: Request) -> None:
    if not is_admin(request.scope):
        raise Forbidden()


async def drift_report(request: Request) -> Response:
    _require_admin(request)
    return FastJSONResponse(runtime_of(request).drift.report())


async def drift_reference(request: Request) -> Response:
    _require_admin(request)
    monitor = runtime_of(request).drift.monitor
    if monitor is None:
        raise NotFound("drift monitoring is off on this server (drift.enabled: false)")
    report = monitor.report()
    snapshot = monitor.reference_snapshot()
    # Which features are still being learned, so `drift save-reference` can say what it is missing.
    snapshot["complete"] = report["reference"]["complete"]
    snapshot["pending"] = sorted(set(report["features"]) - set(snapshot["features"]))
    return FastJSONResponse(snapshot)
