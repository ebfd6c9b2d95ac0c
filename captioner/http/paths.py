"""Every URL path the server answers, in one place: the route table, the OpenAPI document and the gate use these."""

from __future__ import annotations

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
