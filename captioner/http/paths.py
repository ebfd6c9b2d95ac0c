"""Every URL path the server answers, in one place: the route table, the OpenAPI document and the gate use these."""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.types import Scope

from captioner.guard import tenants

# Everything under this prefix goes through the API gate (keys, rate limits), and POST / (Hugging Face's
# image-to-text convention); the rest is open.
API_PREFIX = "/api/"

CAPTION = "/api/v1/caption"
JOB = "/api/v1/caption/{job_id}"
DRIFT = "/api/v1/drift"
DRIFT_REFERENCE = "/api/v1/drift/reference"
FEEDBACK = "/api/v1/feedback"
VARIANTS = "/api/v1/variants"

HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"
OPENAPI = "/openapi.json"

INDEX = "/"  # GET: the web page
HF_IMAGE_TO_TEXT = "/"  # POST: huggingface_hub.InferenceClient(base_url=... or model=...).image_to_text()
STATIC = "/static"

# (method, path) of every endpoint that takes work in (a body to read, an image to fetch, decode and caption):
# each such request holds an admission ticket until it is answered (guard/admission.py).
ADMITTED = frozenset({("POST", CAPTION), ("POST", HF_IMAGE_TO_TEXT), ("POST", FEEDBACK)})


def is_protected(method: str, path: str) -> bool:
    """Whether a request must pass the API gate (keys, rate limits)."""
    return path.startswith(API_PREFIX) or (method == "POST" and path == HF_IMAGE_TO_TEXT)


# The scope a tenant needs for each endpoint (guard/tenants.py). Everything that describes the models or summarises
# every caller's traffic is admin's: the variants (model names, revisions, weights, live figures) and drift.
SCOPES = {
    ("POST", CAPTION): tenants.CAPTION,  # ?mode=async: jobs (scope_of)
    ("POST", HF_IMAGE_TO_TEXT): tenants.CAPTION,
    ("GET", JOB): tenants.JOBS,
    ("POST", FEEDBACK): tenants.FEEDBACK,
    ("GET", VARIANTS): tenants.ADMIN,
    ("GET", DRIFT): tenants.ADMIN,
    ("GET", DRIFT_REFERENCE): tenants.ADMIN,
}
_JOB_PREFIX = CAPTION + "/"


def scope_of(scope: Scope) -> str | None:
    """The scope the request's endpoint needs; None for a path that is no endpoint (it is answered 404)."""
    method, path = scope["method"], scope["path"]
    if method == "GET" and path.startswith(_JOB_PREFIX) and "/" not in path[len(_JOB_PREFIX) :]:
        return tenants.JOBS
    needed = SCOPES.get((method, path))
    if method == "POST" and path == CAPTION and "async" in _query(scope).get("mode", ()):
        return tenants.JOBS
    return needed


def _query(scope: Scope) -> dict[str, list[str]]:
    raw = scope.get("query_string", b"")
    return parse_qs(raw.decode("latin-1")) if raw else {}
