"""What load balancers, orchestrators and Prometheus ask: health, readiness, metrics, the OpenAPI document."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from captioner.http.openapi import openapi_schema
from captioner.http.responses import FastJSONResponse
from captioner.http.state import app_state


async def healthz(request: Request) -> Response:
    return FastJSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = app_state(request)
    role = {} if state.role == "all" else {"role": state.role}  # an api replica is ready with no model
    if state.ready and not state.draining:
        return FastJSONResponse({"status": "ready", **role})
    reason = "draining" if state.draining else ("failed: " + state.load_error if state.load_error else "loading")
    return FastJSONResponse({"status": reason, **role}, status_code=503)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(app_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return FastJSONResponse(openapi_schema(app_state(request).settings))
