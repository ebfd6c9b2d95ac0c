"""``X-Assignment-Key``: the caller's name for an end user, to keep that user on one A/B variant.

Optional, opaque to the server, and checked like ``Idempotency-Key``: one value of 1 to 255 printable ASCII
characters, none of them a space at either end (a header value loses those on the way, so such a key could not
arrive as sent), else 422 ``invalid_request``: a key that read two ways on two replicas would split one user
between variants. Without it a request is assigned by its image (serving/assignment.py); never by API key.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request

from captioner.errors import InvalidRequest

ASSIGNMENT_HEADER = "X-Assignment-Key"
KEY_PATTERN = r"^[!-~](?:[ -~]{0,253}[!-~])?$"
_KEY = re.compile(KEY_PATTERN.removeprefix("^").removesuffix("$"))

OPENAPI_PARAMETER: dict[str, Any] = {
    "name": ASSIGNMENT_HEADER,
    "in": "header",
    "required": False,
    "description": "an opaque name for the end user, to keep them on one A/B variant (canary or not) across "
    "images; without it the image decides. Send the same value with feedback on the caption.",
    "schema": {"type": "string", "maxLength": 255, "pattern": KEY_PATTERN},
}


def assignment_key(request: Request) -> str | None:
    """The request's ``X-Assignment-Key``, or None when it sent none; 422 when malformed or sent twice."""
    values = request.headers.getlist(ASSIGNMENT_HEADER)
    if not values:
        return None
    if len(values) > 1 or not _KEY.fullmatch(values[0]):
        raise InvalidRequest(
            f"{ASSIGNMENT_HEADER} must be one value of 1 to 255 printable ASCII characters, with no space at either end"
        )
    return values[0]
