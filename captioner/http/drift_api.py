"""``GET /api/v1/drift`` (scores and their context) and ``GET /api/v1/drift/reference`` (for save-reference).

Both summarise every caller's traffic, so with auth on they need the ``admin`` scope: the gate (guard/api_guard.py,
``paths.SCOPES``) answers any other key 403 ``forbidden`` before this runs.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from captioner.errors import NotFound
from captioner.http.responses import FastJSONResponse
from captioner.runtime.state import runtime_of


async def drift_report(request: Request) -> Response:
    return FastJSONResponse(runtime_of(request).drift.report())


async def drift_reference(request: Request) -> Response:
    monitor = runtime_of(request).drift.monitor
    if monitor is None:
        raise NotFound("drift monitoring is off on this server (drift.enabled: false)")
    report = monitor.report()
    snapshot = monitor.reference_snapshot()
    # Which features are still being learned, so `drift save-reference` can say what it is missing.
    snapshot["complete"] = report["reference"]["complete"]
    snapshot["pending"] = sorted(set(report["features"]) - set(snapshot["features"]))
    return FastJSONResponse(snapshot)
