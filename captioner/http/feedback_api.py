"""``POST /api/v1/feedback``: a user's rating of a caption, and the caption they would have wanted.

JSON ``{"image_sha256": "<64 hex>" | "job_id": "<id>", "caption": "...", "rating": 1..5, "correction": "..."}``
(``correction`` optional; ``image``, base64, optional and kept only when ``feedback.keep_images`` is on) ->
202 ``{"status": "accepted"}``. Every missing, malformed or unknown field is a 422 ``invalid_request`` naming
it. A ``job_id`` must be a finished, successful job of the caller's (404 otherwise, as for the GET).

The variant credited is the one that served the caption: the job's; for an ``image_sha256``, the one remembered
answering this caller (feedback/served.py), else the one A/B routing assigns to the image, or to the
``X-Assignment-Key`` sent with the rating (the caption request's: assignment is sticky; never the API key).

Every valid rating is kept and answered 202 alike, but it counts toward the canary analysis only when it is the
caller's first rating of an image captioned for them (feedback/served.py); the record says ``counted``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from captioner.errors import InvalidRequest, NotFound, Overloaded, UnsupportedMediaType
from captioner.feedback.collector import UNKNOWN_VARIANT
from captioner.feedback.store import FeedbackRecord
from captioner.guard.caller import api_key_of, principal_of
from captioner.http.assignment import OPENAPI_PARAMETER, assignment_key
from captioner.http.body import body_limit, read_capped_body
from captioner.http.json_body import BASE64_PATTERN, EXAMPLE_IMAGE_BASE64, decode_base64, parse_json
from captioner.http.responses import FastJSONResponse
from captioner.jobs.records import JOB_ID
from captioner.runtime.state import Runtime, runtime_of
from captioner.serving.hashing import sha256_off_loop

SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_TEXT = 1000  # characters in a caption or a correction
# The characters ``str.strip`` removes (``str.isspace``), as a pattern class: a caption or correction must have a
# character outside it. Spelt out because ``\s`` means other sets in Python and in the document's regex dialect.
WHITESPACE = "\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
NOT_BLANK = f"[^{WHITESPACE}]"
FIELDS = ("image_sha256", "job_id", "caption", "rating", "correction", "image")


@dataclass(frozen=True)
class FeedbackRequest:
    image_sha256: str | None  # exactly one of image_sha256 and job_id
    job_id: str | None
    caption: str
    rating: int
    correction: str | None
    image: bytes | None


async def feedback(request: Request) -> Response:
    state = runtime_of(request)
    if not state.settings.feedback.enabled:
        raise NotFound("feedback is off here (feedback.enabled: false)")
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith("application/json"):
        raise UnsupportedMediaType('send JSON: {"image_sha256": ..., "caption": ..., "rating": 1..5}')
    assignment = assignment_key(request)  # 422 when malformed
    body = await read_capped_body(request, body_limit(content_type, state.settings.limits.max_body_bytes))
    payload = await parse_json(body)  # orjson: nesting capped, off the event loop when big
    asked = parse_feedback(payload)
    image_sha256, variant, proven = await _rated_image(request, state, asked, assignment)
    if asked.image is not None and await sha256_off_loop(asked.image) != image_sha256:
        raise InvalidRequest("'image' is not the image that was captioned")
    record = FeedbackRecord(
        image_sha256=image_sha256,
        caption=asked.caption,
        rating=asked.rating,
        variant=variant,
        job_id=asked.job_id,
        correction=asked.correction,
    )
    await state.feedback.add(record, asked.image, caller=principal_of(request.scope), proven=proven)
    return FastJSONResponse({"status": "accepted"}, status_code=202)


def parse_feedback(payload: Any) -> FeedbackRequest:
    """The request's fields, each checked; 422 naming the first that is missing, malformed or unknown."""
    if not isinstance(payload, dict):
        raise InvalidRequest('the JSON body must be an object such as {"image_sha256": ..., "rating": 5, ...}')
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        shown = repr(unknown[0]) if len(unknown[0]) <= 40 else f"{unknown[0][:40]!r}..."
        raise InvalidRequest(f"unknown field {shown}; the fields are {', '.join(FIELDS)}")
    if ("image_sha256" in payload) == ("job_id" in payload):
        raise InvalidRequest("send exactly one of 'image_sha256' and 'job_id'")
    image_sha256, job_id = payload.get("image_sha256"), payload.get("job_id")
    if "image_sha256" in payload and not (isinstance(image_sha256, str) and SHA256.fullmatch(image_sha256)):
        raise InvalidRequest("'image_sha256' must be 64 lowercase hex digits (the caption response's image_sha256)")
    if "job_id" in payload and not (isinstance(job_id, str) and JOB_ID.fullmatch(job_id)):
        raise InvalidRequest("'job_id' must be an async job's id (32 lowercase hex digits)")
    rating = payload.get("rating")
    if isinstance(rating, float) and rating.is_integer():  # 5.0: JSON Schema's integer, as JSON has one number type
        rating = int(rating)
    if not isinstance(rating, int) or isinstance(rating, bool) or not 1 <= rating <= 5:
        shown = repr(rating) if len(repr(rating)) <= 40 else f"a {type(rating).__name__}"  # never echo a huge value
        raise InvalidRequest(f"'rating' must be an integer from 1 to 5 (5 best), got {shown}")
    return FeedbackRequest(
        image_sha256=image_sha256,
        job_id=job_id,
        caption=_text(payload, "caption"),
        rating=rating,
        correction=_text(payload, "correction") if "correction" in payload else None,
        image=decode_base64(payload["image"]) if "image" in payload else None,
    )


def _text(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"'{name}' must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise InvalidRequest(f"'{name}' is over {MAX_TEXT} characters")
    return value.strip()


async def _rated_image(
    request: Request, state: Runtime, asked: FeedbackRequest, assignment: str | None
) -> tuple[str, str, bool]:
    """The rated image's SHA-256, the variant that captioned it, and whether that is proven (the caller's job)
    rather than what routing says now."""
    if asked.job_id is not None:
        job = await state.jobs.get(asked.job_id, principal=api_key_of(request.scope))  # 404: unknown or not yours
        result = job.result or {}
        if job.status != "success" or not isinstance(result.get("image_sha256"), str):
            raise InvalidRequest(f"job {asked.job_id} has no caption to rate ({job.status})")
        return result["image_sha256"], str(result.get("variant") or UNKNOWN_VARIANT), True
    assert asked.image_sha256 is not None
    try:
        variant = state.use_case.variant_for(asked.image_sha256, assignment)
    except Overloaded:  # no variant takes traffic now
        variant = None
    return asked.image_sha256, variant or UNKNOWN_VARIANT, False


def openapi_operation(errors: dict[str, Any]) -> dict[str, Any]:
    """This endpoint in the OpenAPI document; ``errors`` are the error responses it can give."""
    text = {"type": "string", "maxLength": MAX_TEXT, "pattern": NOT_BLANK, "description": "not blank; stripped"}
    fields = {
        "image_sha256": {"type": "string", "pattern": f"^{SHA256.pattern}$"},
        "job_id": {"type": "string", "pattern": f"^{JOB_ID.pattern}$"},
        "caption": text,
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "correction": text,
        "image": {
            "type": "string",
            "pattern": BASE64_PATTERN,
            "contentEncoding": "base64",
            "examples": [EXAMPLE_IMAGE_BASE64],
            "description": "the rated image (it must hash to the rated image_sha256); kept only with "
            "feedback.keep_images",
        },
    }
    schema = {
        "type": "object",
        "properties": fields,
        "required": ["caption", "rating"],
        "oneOf": [{"required": ["image_sha256"]}, {"required": ["job_id"]}],
        "additionalProperties": False,
    }
    accepted = {"type": "object", "properties": {"status": {"const": "accepted"}}, "required": ["status"]}
    return {
        "summary": "Rate a caption (1..5, 5 best), optionally with a corrected caption",
        "operationId": "feedback",
        "parameters": [OPENAPI_PARAMETER],
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "responses": {
            "202": {"description": "kept", "content": {"application/json": {"schema": accepted}}},
            "404": {**errors["422"], "description": "not_found: no such job (or another key's), or feedback is off"},
            **errors,
        },
    }
