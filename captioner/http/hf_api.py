"""``POST /``: Hugging Face's image-to-text convention, so ``huggingface_hub.InferenceClient`` works unchanged.

``InferenceClient(base_url=URL)`` and ``InferenceClient(model=URL)`` both post the image's raw bytes, with no
Content-Type, to the URL itself, and read ``[{"generated_text": "..."}]``. HF Inference Endpoints also take JSON
``{"inputs": "<base64>"}`` (``parameters`` is accepted and ignored: generation is the server's config).
The request takes the same path as ``POST /api/v1/caption``: the gate (keys as ``Authorization: Bearer``, rate
limits), the body and pixel limits, the cache and the batcher; errors keep the contract's JSON shape.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from captioner.config import Settings
from captioner.errors import InvalidImage, InvalidRequest, TooLarge
from captioner.http.assignment import OPENAPI_PARAMETER
from captioner.http.body import body_limit, read_capped_body
from captioner.http.caption_api import caption_sync
from captioner.http.inputs import CaptionRequest
from captioner.http.json_body import BASE64_PATTERN, EXAMPLE_IMAGE_BASE64, decode_base64_off_loop, parse_json
from captioner.http.responses import FastJSONResponse


async def image_to_text(request: Request) -> Response:
    outcome = await caption_sync(request, parse_hf_request)
    return FastJSONResponse([{"generated_text": outcome.captions[0].text}])


async def parse_hf_request(request: Request, settings: Settings) -> CaptionRequest:
    """JSON ``{"inputs": "<base64>"}``, or else the body is the image, whatever its Content-Type says."""
    max_bytes = settings.limits.max_body_bytes
    content_type = request.headers.get("content-type", "").strip().lower()
    body = await read_capped_body(request, body_limit(content_type, max_bytes))
    image = await _json_inputs(body) if content_type.startswith("application/json") else body
    if len(image) > max_bytes:
        raise TooLarge(f"the image is over the limit of {max_bytes} bytes")
    if not image:
        raise InvalidImage("the image is empty")
    return CaptionRequest(image=image, url=None, num_captions=1)  # one caption: the answer holds one


async def _json_inputs(body: bytes) -> bytes:
    payload = await parse_json(body)  # orjson: nesting capped, off the event loop when big
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise InvalidRequest('the JSON body must be {"inputs": "<base64 image>"}')
    return await decode_base64_off_loop(payload["inputs"], "inputs")


def openapi_operation(errors: dict[str, Any]) -> dict[str, Any]:
    """This endpoint in the OpenAPI document; ``errors`` are the error responses it can give."""
    inputs = {
        "type": "object",
        "properties": {
            "inputs": {
                "type": "string",
                "pattern": BASE64_PATTERN,
                "contentEncoding": "base64",
                "examples": [EXAMPLE_IMAGE_BASE64],
            },
            "parameters": {"description": "accepted and ignored: generation follows the server's config"},
        },
        "required": ["inputs"],
        "description": "other fields are ignored, as Hugging Face endpoints do",
    }
    text = {"type": "object", "properties": {"generated_text": {"type": "string"}}, "required": ["generated_text"]}
    generated = {"type": "array", "items": text, "minItems": 1, "maxItems": 1}
    image = {"schema": {"type": "string", "format": "binary"}}
    # Any Content-Type but JSON means the raw image; a few are listed, since "*/*" would include JSON too.
    raw = {
        media_type: image for media_type in ("image/*", "application/octet-stream", "application/x-www-form-urlencoded")
    }
    return {
        "summary": "The best caption, in Hugging Face's image-to-text shape (huggingface_hub.InferenceClient)",
        "description": 'The raw image bytes, or JSON {"inputs": "<base64>"}. Any other Content-Type than JSON, or none '
        "(what InferenceClient sends), is read as the raw image too, like those listed.",
        "operationId": "hf_image_to_text",
        "parameters": [OPENAPI_PARAMETER],
        "requestBody": {"required": True, "content": {"application/json": {"schema": inputs}, **raw}},
        "responses": {
            "200": {"description": "[{generated_text}]", "content": {"application/json": {"schema": generated}}},
            **errors,  # 415 too: a format recognised but not decoded (HEIC, SVG, PDF)
        },
    }
