"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``.

Written out by hand because the API is small and the contract is exact; tests check that it matches what the
server really answers.
"""

from __future__ import annotations

from typing import Any

from . import __version__
from .config import Settings

_ERROR_CODES = [
    "invalid_image", "invalid_request", "too_large", "unsupported_media_type", "url_not_allowed",
    "url_fetch_failed", "unauthorized", "rate_limited", "overloaded", "timeout", "model_error",
    "internal_error", "not_found", "method_not_allowed",
]  # fmt: skip


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if retry_after:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return response


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
        "413": _error("too_large: body over limits.max_body_bytes or pixels over limits.max_pixels"),
        "415": _error("unsupported_media_type"),
        "422": _error("invalid_request"),
        "429": _error("rate_limited", retry_after=True),
        "500": _error("model_error"),
        "503": _error("overloaded: queue full, loading or draining", retry_after=True),
        "504": _error("timeout: the request deadline passed before inference"),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "captioner",
            "version": __version__,
            "description": "Image captioning with BLIP behind a dynamic batcher and a cache.",
        },
        "paths": {
            "/api/v1/caption": {
                "post": {
                    "summary": "Caption one image",
                    "operationId": "caption",
                    "parameters": [{"name": "num_captions", "in": "query", "required": False, "schema": num_captions}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "image": {"type": "string", "format": "binary"},
                                        "url": {"type": "string"},
                                        "num_captions": num_captions,
                                    },
                                }
                            },
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "image": {"type": "string", "description": "base64 image bytes"},
                                        "url": {"type": "string", "format": "uri"},
                                        "num_captions": num_captions,
                                    },
                                }
                            },
                            "image/*": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Captions, best first",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/CaptionResponse"}}
                            },
                        },
                        **errors,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "operationId": "healthz",
                    "responses": {
                        "200": {"description": "alive", "content": {"application/json": {"schema": status_only}}}
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness",
                    "operationId": "readyz",
                    "responses": {
                        "200": {"description": "ready", "content": {"application/json": {"schema": status_only}}},
                        "503": {
                            "description": "loading or draining",
                            "content": {"application/json": {"schema": status_only}},
                        },
                    },
                }
            },
            "/metrics": {
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
        },
        "components": {
            "schemas": {
                "Caption": {
                    "type": "object",
                    "properties": {
                        "text": {"type": "string"},
                        "confidence": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    },
                    "required": ["text", "confidence"],
                },
                "CaptionResponse": {
                    "type": "object",
                    "properties": {
                        "status": {"const": "success"},
                        "captions": {"type": "array", "items": {"$ref": "#/components/schemas/Caption"}},
                        "model": {"type": "string"},
                        "cached": {"type": "boolean"},
                        "image_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    },
                    "required": ["status", "captions", "model", "cached", "image_sha256"],
                },
                "Error": {
                    "type": "object",
                    "properties": {
                        "status": {"const": "error"},
                        "error": {
                            "type": "object",
                            "properties": {"code": {"enum": _ERROR_CODES}, "message": {"type": "string"}},
                            "required": ["code", "message"],
                        },
                    },
                    "required": ["status", "error"],
                },
            }
        },
    }
