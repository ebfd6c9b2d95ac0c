"""``X-Assignment-Key``: one value of 1 to 255 printable ASCII characters, else 422 ``invalid_request``."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from captioner.config import load_settings
from captioner.errors import InvalidRequest
from captioner.http.assignment import ASSIGNMENT_HEADER, OPENAPI_PARAMETER, assignment_key
from captioner.http.openapi import openapi_schema


def request(*values: bytes) -> Request:
    headers = [(ASSIGNMENT_HEADER.lower().encode(), value) for value in values]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


def test_a_well_formed_key_is_read_and_none_is_none() -> None:
    assert assignment_key(request()) is None
    assert assignment_key(request(b"user-42")) == "user-42"
    assert assignment_key(request(b"x" * 255)) == "x" * 255
    assert assignment_key(request(b"tenant a / user {7}")) == "tenant a / user {7}"


@pytest.mark.parametrize(
    "values",
    [(b"",), (b"x" * 256,), ("caf\u00e9".encode(),), (b"tab\there",), (b"nul\x00",), (b"a", b"b"), (b" padded",)],
)
def test_a_malformed_key_is_refused_with_422(values: tuple[bytes, ...]) -> None:
    with pytest.raises(InvalidRequest, match=ASSIGNMENT_HEADER) as refused:
        assignment_key(request(*values))
    assert refused.value.status_code == 422 and refused.value.code == "invalid_request"


def test_every_caption_and_feedback_operation_documents_the_header() -> None:
    paths = openapi_schema(load_settings(None, {}))["paths"]
    for path in ("/api/v1/caption", "/", "/api/v1/feedback"):
        assert OPENAPI_PARAMETER in paths[path]["post"]["parameters"], path
