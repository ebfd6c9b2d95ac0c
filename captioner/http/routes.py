"""Every endpoint, in one table. Paths come from ``paths.py``; endpoints read what they need from ``AppState``."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route

from captioner.http import paths, probes
from captioner.http.caption_api import caption
from captioner.http.drift_api import drift_reference, drift_report
from captioner.http.feedback_api import feedback
from captioner.http.hf_api import image_to_text
from captioner.http.jobs_api import job_status
from captioner.http.variants_api import variants_report
from captioner.http.web import index, static_files


def routes(role: str = "all") -> list[BaseRoute]:
    """The table for a ``serve --role``: a ``worker`` answers only probes and metrics (it takes no requests)."""
    operations: list[BaseRoute] = [
        Route(paths.HEALTHZ, probes.healthz, methods=["GET"]),
        Route(paths.READYZ, probes.readyz, methods=["GET"]),
        Route(paths.METRICS, probes.metrics, methods=["GET"]),
    ]
    if role == "worker":
        return operations
    return [
        # The API, behind the gate (keys, rate limits).
        Route(paths.CAPTION, caption, methods=["POST"]),
        Route(paths.JOB, job_status, methods=["GET"]),
        Route(paths.DRIFT, drift_report, methods=["GET"]),
        Route(paths.DRIFT_REFERENCE, drift_reference, methods=["GET"]),
        Route(paths.FEEDBACK, feedback, methods=["POST"]),
        Route(paths.HF_IMAGE_TO_TEXT, image_to_text, methods=["POST"]),
        Route(paths.VARIANTS, variants_report, methods=["GET"]),
        # Open: probes, metrics, the API's description, the web page.
        *operations,
        Route(paths.OPENAPI, probes.openapi, methods=["GET"]),
        Route(paths.INDEX, index, methods=["GET"], name="index"),
        Mount(paths.STATIC, app=static_files(), name="static"),
    ]
