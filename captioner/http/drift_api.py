"""``GET /api/v1/drift`` (scores and their context) and ``GET /api/v1/drift/reference`` (for save-reference)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from captioner.errors import NotFound
from captioner.http.responses import FastJSONResponse
from captioner.http.state import app_state


async def drift_report(request: Request) -> Response:
    return FastJSONResponse(app_state(request).drift.report())


async def drift_reference(request: Request) -> Response:
    monitor = app_state(request).drift.monitor
    if monitor is None:
        raise NotFound("drift monitoring is off on this server (drift.enabled: false)")
    report = monitor.report()
    snapshot = monitor.reference_snapshot()
    # Which features are still being learned, so `drift save-reference` can say what it is missing.
    snapshot["complete"] = report["reference"]["complete"]
    snapshot["pending"] = sorted(set(report["features"]) - set(snapshot["features"]))
    return FastJSONResponse(snapshot)
