"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``.

Written out by hand because the API is small and the contract is exact; tests check that it matches what the
server really answers.
"""

from __future__ import annotations

from typing import Any

from captioner import __version__
from captioner.config import Settings
from captioner.errors import error_codes
from captioner.http import assignment, feedback_api, hf_api, paths
from captioner.http.openapi_schemas import component_schemas

_ERROR_CODES = error_codes()
_CALLBACK_URL = {
    "type": "string",
    "format": "uri",
    "description": "mode=async: POSTed the job's result when it ends, signed with X-Captioner-Signature: "
    "sha256=<HMAC-SHA256 of the body under jobs.callback_secret>; retried with backoff",
}


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if retry_after:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return response


def _caption_request_body(settings: Settings, num_captions: dict[str, Any]) -> dict[str, Any]:
    """The ways to send an image. Exactly one of ``image`` and ``url`` (``url`` only when URL input is on)."""

    def image_or_url(image: dict[str, Any], url: dict[str, Any]) -> dict[str, Any]:
        properties = {"image": image, "num_captions": num_captions, "callback_url": _CALLBACK_URL}
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if settings.url_input.enabled:
            schema["properties"]["url"] = url
            schema["oneOf"] = [{"required": ["image"]}, {"required": ["url"]}]
        else:
            schema["required"] = ["image"]
        return {"schema": schema}

    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "required": True,
        "content": {
            "multipart/form-data": image_or_url({"type": "string", "format": "binary"}, {"type": "string"}),
            "application/json": image_or_url(
                {"type": "string", "description": "base64 image bytes, or a data: URL"},
                {"type": "string", "format": "uri"},
            ),
            "image/*": binary,
            "application/octet-stream": binary,
        },
    }


def openapi_schema(settings: Settings) -> dict[str, Any]:
    max_captions = settings.generation.max_num_captions
    num_captions = {
        "type": "integer",
        "minimum": 1,
        "maximum": max_captions,
        "default": settings.generation.num_captions,
    }
    status_only = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
    errors = {
        "400": _error("invalid_image, url_not_allowed or url_fetch_failed"),
        "401": _error("unauthorized"),
        "408": _error("timeout: the body did not arrive within limits.body_timeout_s"),
        "413": _error("too_large: body over limits.max_body_bytes or pixels over limits.max_pixels"),
        "415": _error("unsupported_media_type"),
        "422": _error("invalid_request"),
        "429": _error("rate_limited", retry_after=True),
        "500": _error("model_error"),
        "503": _error(
            "overloaded: queue (or, mode=async, job queue) full, loading, draining, the model down or failing, or "
            "(rate_limit.fail_open: false) rate limits unavailable",
            retry_after=True,
        ),
        "504": _error("timeout: the request deadline passed before inference"),
    }
    forbidden = _error("forbidden: with auth on, this needs an admin key (auth.admin_keys)")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "captioner",
            "version": __version__,
            "description": "Image captioning with BLIP behind a dynamic batcher and a cache.",
        },
        "paths": {
            paths.CAPTION: {
                "post": {
                    "summary": "Caption one image",
                    "operationId": "caption",
                    "parameters": [
                        {"name": "num_captions", "in": "query", "required": False, "schema": num_captions},
                        {
                            "name": "mode",
                            "in": "query",
                            "required": False,
                            "description": "async: answer 202 with a job id at once; fetch the result from "
                            "GET /api/v1/caption/{job_id}",
                            "schema": {"enum": ["sync", "async"], "default": "sync"},
                        },
                        {"name": "callback_url", "in": "query", "required": False, "schema": _CALLBACK_URL},
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": "mode=async: the same key from the same API key within jobs.ttl_s "
                            "answers the first request's job instead of making another",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
                        },
                        assignment.OPENAPI_PARAMETER,
                    ],
                    "requestBody": _caption_request_body(settings, num_captions),
                    "responses": {
                        "200": {
                            "description": "Captions, best first",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/CaptionResponse"}}
                            },
                        },
                        "202": {
                            "description": "mode=async: the job was accepted",
                            "headers": {
                                "Location": {"schema": {"type": "string"}, "description": "the job's URL"},
                                "Idempotent-Replayed": {
                                    "schema": {"const": "true"},
                                    "description": "an earlier request with this Idempotency-Key made the job",
                                },
                            },
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobAccepted"}}},
                        },
                        **errors,
                    },
                }
            },
            paths.JOB: {
                "get": {
                    "summary": "An async job's result",
                    "operationId": "get_caption_job",
                    "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "200": {
                            "description": "processing (with Retry-After), or the finished job: status success with "
                            "the synchronous body, or status error with the error body",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobResult"}}},
                        },
                        "401": errors["401"],
                        "404": _error("not_found: unknown or expired job id, or another API key's job"),
                        "429": errors["429"],
                        "503": _error("overloaded: the job queue or store (Redis) is unavailable", retry_after=True),
                    },
                }
            },
            paths.HF_IMAGE_TO_TEXT: {"post": hf_api.openapi_operation(errors)},
            paths.FEEDBACK: {"post": feedback_api.openapi_operation(errors)},
            paths.HEALTHZ: {
                "get": {
                    "summary": "Liveness",
                    "operationId": "healthz",
                    "responses": {
                        "200": {"description": "alive", "content": {"application/json": {"schema": status_only}}}
                    },
                }
            },
            paths.READYZ: {
                "get": {
                    "summary": "Readiness",
                    "operationId": "readyz",
                    "responses": {
                        "200": {"description": "ready", "content": {"application/json": {"schema": status_only}}},
                        "503": {
                            "description": "not ready, and why: loading, draining, a model down, failing or failed",
                            "content": {"application/json": {"schema": status_only}},
                        },
                    },
                }
            },
            paths.METRICS: {
                "get": {
                    "summary": "Prometheus metrics",
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            paths.DRIFT: {
                "get": {
                    "summary": "Drift scores: PSI of each input and caption feature, recent requests vs the reference",
                    "operationId": "get_drift",
                    "responses": {
                        "200": {
                            "description": "enabled, reference (source, size, complete), window, psi_alert, and per "
                            "feature: psi (null until min_window observations), alert, reference_n, window_n",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DriftReport"}}},
                        },
                        "401": errors["401"],
                        "403": forbidden,
                        "429": errors["429"],
                    },
                }
            },
            paths.DRIFT_REFERENCE: {
                "get": {
                    "summary": "The drift reference learnt so far (what `captioner drift save-reference` saves)",
                    "operationId": "get_drift_reference",
                    "responses": {
                        "200": {
                            "description": "version, bins, the fixed features' bins and shares, complete, pending",
                            "content": {"application/json": {"schema": {"type": "object", "required": ["features"]}}},
                        },
                        "401": errors["401"],
                        "403": forbidden,
                        "404": _error("not_found: drift monitoring is off (drift.enabled: false)"),
                        "429": errors["429"],
                    },
                }
            },
            paths.VARIANTS: {
                "get": {
                    "summary": "The live A/B variants and the canary analysis (registry serving: production, canary)",
                    "operationId": "get_variants",
                    "responses": {
                        "200": {
                            "description": "variants (weight, model, revision, stats: requests, errors, error_ratio, "
                            "p95_s, mean_confidence), canary (state: none, paused, waiting, healthy or rolled_back; "
                            "reason, detail, the signals compared), registry (name, production, canary) or null",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Variants"}}},
                        },
                        "401": errors["401"],
                        "429": errors["429"],
                    },
                }
            },
        },
        "components": {"schemas": component_schemas(_ERROR_CODES)},
    }
