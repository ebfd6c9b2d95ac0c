"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``.

Written out by hand because the API is small and the contract is exact. It describes this server as
configured, and says exactly what it accepts: a request the document forbids is refused with a 4xx, and one it
allows is not refused for its form (only for its content: an image that doesn't decode, an unknown job id).
``tests/unit/http/test_schemathesis.py`` fuzzes the server from the document it serves to hold both ways.

- Fields present only when their feature is on: ``url`` (``url_input.enabled``), ``callback_url``
  (``jobs.callback_secret``), the bearer security scheme and 401/403 (``auth.api_keys``, ``auth.admin_keys`` or
  ``auth.keys_file``).
- Bodies are closed (``additionalProperties: false``; Hugging Face's ``{"inputs"}`` excepted, whose clients send
  more), base64 fields carry the exact pattern ``decode_base64`` accepts, and parameters their ranges.
- What JSON Schema can't say is in the descriptions: ``callback_url`` only with ``mode=async``, a feedback
  ``image`` hashing to its ``image_sha256``, an ``Idempotency-Key`` reused for a different request.
"""

from __future__ import annotations

from typing import Any

from captioner import __version__
from captioner.config import Settings
from captioner.errors import error_codes
from captioner.http import assignment, feedback_api, hf_api, paths
from captioner.http.inputs import FIELDS, MAX_URL_CHARS
from captioner.http.jobs_api import IDEMPOTENCY_HEADER, IDEMPOTENCY_KEY_PATTERN, MODES
from captioner.http.json_body import BASE64_PATTERN, EXAMPLE_IMAGE_BASE64
from captioner.http.openapi_schemas import component_schemas
from captioner.jobs.records import JOB_ID

_ERROR_CODES = error_codes()
JOB_ID_PATTERN = f"^{JOB_ID.pattern}$"  # secrets.token_hex(16), as JobRequest.new makes them
_CALLBACK_URL = {
    "type": "string",
    "format": "uri",
    "maxLength": MAX_URL_CHARS,
    "description": "mode=async only (422 with mode=sync): POSTed the job's result when it ends, signed with "
    "X-Captioner-Signature: sha256=<HMAC-SHA256 of the body under jobs.callback_secret>; retried with backoff",
}
_RETRY_AFTER = {
    "Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1}, "description": "seconds"}
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def _error(description: str, *, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def _errors(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every error response, by status; each operation picks the ones it can answer."""
    errors = {
        "400": _error("invalid_image; url_not_allowed or url_fetch_failed (a URL to fetch or call back)"),
        "401": _error(
            "unauthorized: no, or no valid, Authorization: Bearer <key>",
            headers={"WWW-Authenticate": {"required": True, "schema": {"const": "Bearer"}}},
        ),
        "403": _error("forbidden: the key's tenant lacks this endpoint's scope (caption, jobs, feedback or admin)"),
        "408": _error(
            "timeout: the body did not arrive within limits.body_timeout_s (the connection is closed)",
            headers={"Connection": {"schema": {"const": "close"}}},
        ),
        "413": _error("too_large: body over limits.max_body_bytes or pixels over limits.max_pixels"),
        "415": _error("unsupported_media_type: a Content-Type not listed, or an image format not decoded"),
        "422": _error("invalid_request: a missing, malformed, repeated or unknown parameter or field"),
        "429": _error(
            "rate_limited: over the caller's rate limit (or, mode=async, its outstanding jobs' cap); quota_exceeded: "
            "its tenant's daily images are spent (Retry-After: seconds until midnight UTC, when the quota resets)",
            headers=_RETRY_AFTER,
        ),
        "500": _error("model_error"),
        "503": _error(
            "overloaded: queue (or, mode=async, job queue) full, admission budget spent, loading, draining, the "
            "model down or failing, a store (Redis) unavailable, or (rate_limit.fail_open: false) rate limits "
            "unavailable",
            headers=_RETRY_AFTER,
        ),
        "504": _error("timeout: the request deadline passed before inference", headers=_RETRY_AFTER),
    }
    if not _auth_on(settings):
        del errors["401"], errors["403"]
    return errors


def _auth_on(settings: Settings) -> bool:
    return bool(settings.auth.api_keys or settings.auth.admin_keys or settings.auth.keys_file)


def _pick(errors: dict[str, dict[str, Any]], *statuses: str) -> dict[str, dict[str, Any]]:
    return {status: errors[status] for status in statuses if status in errors}


def _caption_request_body(settings: Settings, num_captions: dict[str, Any]) -> dict[str, Any]:
    """The ways to send an image. Exactly one of ``image`` and ``url`` (``url`` only when URL input is on)."""

    def image_or_url(image: dict[str, Any], url: dict[str, Any]) -> dict[str, Any]:
        properties = {"image": image, "url": url, "num_captions": num_captions, "callback_url": _CALLBACK_URL}
        if not settings.url_input.enabled:
            del properties["url"]
        if not settings.jobs.callback_secret:
            del properties["callback_url"]
        assert set(properties) <= set(FIELDS)  # what inputs.py reads
        schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        if settings.url_input.enabled:
            schema["oneOf"] = [{"required": ["image"]}, {"required": ["url"]}]
        else:
            schema["required"] = ["image"]
        return {"schema": schema}

    url = {
        "type": "string", "format": "uri", "minLength": 1, "maxLength": MAX_URL_CHARS,
        "description": "an http(s) URL of the image",
    }  # fmt: skip
    base64_image = {
        "type": "string",
        "pattern": BASE64_PATTERN,
        "contentEncoding": "base64",
        "description": "base64 image bytes (whitespace anywhere), or a data: URL",
        "examples": [EXAMPLE_IMAGE_BASE64],
    }
    form = image_or_url({"type": "string", "format": "binary"}, url)
    sniffed = {
        **_BINARY,
        "description": "the image's bytes, recognised by their magic bytes (what curl --data-binary sends without "
        "-H)" + ("; or a form with the field url" if settings.url_input.enabled else ""),
    }
    return {
        "required": True,
        "content": {
            "multipart/form-data": form,
            "application/json": image_or_url(base64_image, url),
            "image/*": _BINARY,
            "application/octet-stream": _BINARY,
            "application/x-www-form-urlencoded": sniffed,
        },
    }


def _caption_operation(settings: Settings, errors: dict[str, dict[str, Any]]) -> dict[str, Any]:
    num_captions = {
        "type": "integer",
        "minimum": 1,
        "maximum": settings.generation.max_num_captions,
        "default": settings.generation.num_captions,
    }
    parameters = [
        {
            "name": "num_captions",
            "in": "query",
            "required": False,
            "description": "wins over a form or JSON field of the same name (both are checked)",
            "schema": num_captions,
        },
        {
            "name": "mode",
            "in": "query",
            "required": False,
            "description": "async: answer 202 with a job id at once; fetch the result from "
            "GET /api/v1/caption/{job_id}",
            "schema": {"type": "string", "enum": list(MODES), "default": "sync"},
        },
        {"name": "callback_url", "in": "query", "required": False, "schema": _CALLBACK_URL},
        {
            "name": IDEMPOTENCY_HEADER,
            "in": "header",
            "required": False,
            "description": "mode=async (and, on an api-role replica, sync): the same key from the same API key "
            "within jobs.ttl_s answers the first request's job instead of making another; the same key with a "
            "different request is a 422",
            "schema": {"type": "string", "maxLength": 255, "pattern": IDEMPOTENCY_KEY_PATTERN},
        },
        assignment.OPENAPI_PARAMETER,
    ]
    if not settings.jobs.callback_secret:
        parameters = [p for p in parameters if p["name"] != "callback_url"]
    return {
        "summary": "Caption one image",
        "operationId": "caption",
        "parameters": parameters,
        "requestBody": _caption_request_body(settings, num_captions),
        "responses": {
            "200": {
                "description": "Captions, best first",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CaptionResponse"}}},
            },
            "202": {
                "description": "mode=async: the job was accepted",
                "headers": {
                    "Location": {"required": True, "schema": {"type": "string"}, "description": "the job's URL"},
                    "Idempotent-Replayed": {
                        "schema": {"const": "true"},
                        "description": "an earlier request with this Idempotency-Key made the job",
                    },
                },
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobAccepted"}}},
            },
            **_pick(errors, "400", "401", "403", "408", "413", "415", "422", "429", "500", "503", "504"),
        },
    }


def _get(summary: str, operation_id: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"get": {"summary": summary, "operationId": operation_id, **more, "responses": responses}}


def openapi_schema(settings: Settings) -> dict[str, Any]:
    errors = _errors(settings)
    status_only = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
    gated = _pick(errors, "401", "403", "429", "503")  # the gate's answers (keys, scopes, rate limits)
    page = {
        "description": "the page; its CSS and JS are under /static/",
        "headers": {
            name: {"required": True, "schema": {"type": "string"}}
            for name in ("Content-Security-Policy", "X-Content-Type-Options", "Cache-Control")
        },
        "content": {"text/html": {"schema": {"type": "string"}}},
    }
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "captioner",
            "version": __version__,
            "description": "Image captioning with BLIP behind a dynamic batcher and a cache.",
        },
        "paths": {
            paths.CAPTION: {"post": _caption_operation(settings, errors)},
            paths.JOB: _get(
                "An async job's result",
                "get_caption_job",
                {
                    "200": {
                        "description": "processing (with Retry-After), or the finished job: status success with the "
                        "synchronous body, or status error with the error body",
                        "headers": {
                            "Cache-Control": {"required": True, "schema": {"const": "no-store"}},
                            "Retry-After": {"schema": {"type": "integer"}, "description": "while processing"},
                        },
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobResult"}}},
                    },
                    "404": _error("not_found: unknown or expired job id, or another API key's job"),
                    **gated,
                },
                parameters=[
                    {
                        "name": "job_id",
                        "in": "path",
                        "required": True,
                        "description": "as the 202 gave it; anything else is not found (404)",
                        "schema": {"type": "string", "pattern": JOB_ID_PATTERN},
                    }
                ],
            ),
            paths.INDEX: {
                **_get("The web page", "web_page", {"200": page}),
                "post": hf_api.openapi_operation(
                    _pick(errors, "400", "401", "403", "408", "413", "415", "422", "429", "500", "503", "504")
                ),
            },
            paths.FEEDBACK: {
                "post": feedback_api.openapi_operation(
                    _pick(errors, "401", "403", "408", "413", "415", "422", "429", "503")
                )
            },
            paths.HEALTHZ: _get(
                "Liveness",
                "healthz",
                {"200": {"description": "alive", "content": {"application/json": {"schema": status_only}}}},
            ),
            paths.READYZ: _get(
                "Readiness",
                "readyz",
                {
                    "200": {"description": "ready", "content": {"application/json": {"schema": status_only}}},
                    "503": {
                        "description": "not ready, and why: loading, draining, a model down, failing or failed",
                        "content": {"application/json": {"schema": status_only}},
                    },
                },
            ),
            paths.METRICS: _get(
                "Prometheus metrics",
                "metrics",
                {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            ),
            paths.OPENAPI: _get(
                "This document",
                "openapi",
                {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object", "required": ["openapi"]}}},
                    }
                },
            ),
            paths.DRIFT: _get(
                "Drift scores: PSI of each input and caption feature, recent requests vs the reference",
                "get_drift",
                {
                    "200": {
                        "description": "enabled, reference (source, size, complete), window, psi_alert, and per "
                        "feature: psi (null until min_window observations), alert, reference_n, window_n",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DriftReport"}}},
                    },
                    **gated,
                },
            ),
            paths.DRIFT_REFERENCE: _get(
                "The drift reference learnt so far (what `captioner drift save-reference` saves)",
                "get_drift_reference",
                {
                    "200": {
                        "description": "version, bins, the fixed features' bins and shares, complete, pending",
                        "content": {"application/json": {"schema": {"type": "object", "required": ["features"]}}},
                    },
                    "404": _error("not_found: drift monitoring is off (drift.enabled: false)"),
                    **gated,
                },
            ),
            paths.VARIANTS: _get(
                "The live A/B variants and the canary analysis (registry serving: production, canary)",
                "get_variants",
                {
                    "200": {
                        "description": "variants (weight, model, revision, stats: requests, errors, error_ratio, "
                        "p95_s, mean_confidence), canary (state: none, paused, waiting, healthy or rolled_back; "
                        "reason, detail, the signals compared), registry (name, production, canary) or null",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Variants"}}},
                    },
                    **gated,
                },
            ),
        },
        "components": {"schemas": component_schemas(_ERROR_CODES)},
    }
    if _auth_on(settings):
        spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, item in spec["paths"].items():
            for method, operation in item.items():
                if paths.is_protected(method.upper(), path):
                    operation["security"] = [{"bearer": []}]
    return spec
