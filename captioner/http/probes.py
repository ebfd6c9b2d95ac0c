"""What load balancers, orchestrators and Prometheus ask: health, readiness, metrics, the OpenAPI document."""

from __future__ import annotations

import re

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from captioner.http.openapi import openapi_schema
from captioner.http.responses import FastJSONResponse
from captioner.runtime.state import runtime_of


async def healthz(request: Request) -> Response:
    return FastJSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = runtime_of(request)
    role = {} if state.role == "all" else {"role": state.role}  # an api replica is ready with no model
    reason = state.not_ready_reason()
    if reason is None:
        return FastJSONResponse({"status": "ready", **role})
    return FastJSONResponse({"status": public_reason(reason), **role}, status_code=503)


def public_reason(reason: str) -> str:
    """``reason`` without error text: "failed: FileNotFoundError: /internal/path..." says just "failed".

    /readyz is open to anyone who can reach the port, and exception messages name paths, hosts and devices;
    they are in the log. Our own words ("model down: ...", "model failing: 3 batches ...") stay.
    """
    parts = []
    for problem in reason.split("; "):
        variant = re.match(r"variant [^:]+: ", problem)
        prefix = variant.group(0) if variant else ""
        rest = problem[len(prefix) :]
        parts.append(prefix + ("failed" if rest.startswith("failed") else rest))
    return "; ".join(parts)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(runtime_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return FastJSONResponse(openapi_schema(runtime_of(request).settings))
