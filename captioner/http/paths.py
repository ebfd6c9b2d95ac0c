"""Every URL path the server answers, in one place: the route table, the OpenAPI document and the gate use these."""

from __future__ import annotations

# Everything under this prefix goes through the API gate (keys, rate limits); the rest is open.
API_PREFIX = "/api/"

CAPTION = "/api/v1/caption"
JOB = "/api/v1/caption/{job_id}"
DRIFT = "/api/v1/drift"
DRIFT_REFERENCE = "/api/v1/drift/reference"
VARIANTS = "/api/v1/variants"

HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"
OPENAPI = "/openapi.json"

INDEX = "/"
STATIC = "/static"
