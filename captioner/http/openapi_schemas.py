"""The OpenAPI document's reusable schemas (``components.schemas``): the response bodies and the error shape."""

from __future__ import annotations

from typing import Any


def component_schemas(error_codes: list[str]) -> dict[str, Any]:
    job_id_required = {"type": "object", "properties": {"job_id": {"type": "string"}}, "required": ["job_id"]}
    return {
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
                # Only behind a confidence cascade (config `cascade`): whose captions these are; `model` names it.
                "cascade": {"enum": ["accepted", "escalated"]},
            },
            "required": ["status", "captions", "model", "cached", "image_sha256"],
        },
        "JobAccepted": {
            "type": "object",
            "properties": {
                "status": {"const": "processing"},
                "job_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "estimated_time_seconds": {"type": "number", "minimum": 0},
            },
            "required": ["status", "job_id", "estimated_time_seconds"],
        },
        "JobResult": {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {"status": {"const": "processing"}, "job_id": {"type": "string"}},
                    "required": ["status", "job_id"],
                },
                {"allOf": [{"$ref": "#/components/schemas/CaptionResponse"}, job_id_required]},
                {"allOf": [{"$ref": "#/components/schemas/Error"}, job_id_required]},
            ]
        },
        "DriftReport": {
            "type": "object",
            "properties": {
                "enabled": {"type": "boolean"},
                "features": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "psi": {"type": ["number", "null"]},
                            "alert": {"type": "boolean"},
                            "reference_n": {"type": "integer"},
                            "window_n": {"type": "integer"},
                        },
                    },
                },
            },
            "required": ["enabled", "features"],
        },
        "Variants": {
            "type": "object",
            "properties": {
                "variants": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "variant": {"type": "string"},
                            "weight": {"type": "number", "minimum": 0},
                            "model": {"type": "string"},
                            "stats": {"type": "object", "required": ["requests", "errors"]},
                        },
                        "required": ["variant", "weight", "model", "stats"],
                    },
                },
                "canary": {
                    "type": "object",
                    "properties": {"state": {"type": "string"}},
                    "required": ["state"],
                },
                "registry": {"type": ["object", "null"]},
            },
            "required": ["variants", "canary", "registry"],
        },
        "Error": {
            "type": "object",
            "properties": {
                "status": {"const": "error"},
                "error": {
                    "type": "object",
                    "properties": {"code": {"enum": error_codes}, "message": {"type": "string"}},
                    "required": ["code", "message"],
                },
            },
            "required": ["status", "error"],
        },
    }
