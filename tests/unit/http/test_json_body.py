"""JSON and base64 bodies: bounded nesting, parsed off the event loop when big, whitespace stripped on bytes."""

from __future__ import annotations

import asyncio
import base64
import threading
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captioner.errors import InvalidRequest
from captioner.http import json_body
from captioner.http.json_body import (
    BASE64_PATTERN,
    EXAMPLE_IMAGE_BASE64,
    OFF_LOOP_BYTES,
    decode_base64,
    decode_base64_off_loop,
    parse_json,
)


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b"\xff\xfe", b"{", b"1" * 400, b""],
    ids=["nested-arrays", "nested-objects", "not-utf8", "truncated", "huge-integer", "empty"],
)
def test_hostile_json_is_an_invalid_request(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        asyncio.run(parse_json(body))


def test_big_bodies_are_parsed_on_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    original = json_body.orjson.loads

    def recording(data: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(data)

    monkeypatch.setattr(json_body.orjson, "loads", recording)
    big = b'{"image": "' + b"A" * (OFF_LOOP_BYTES + 10) + b'"}'

    async def both() -> None:
        await parse_json(b'{"image": "AAAA"}')
        await parse_json(big)

    asyncio.run(both())
    main = threading.main_thread().name
    assert threads[0] == main and threads[1] != main


def test_base64_whitespace_is_stripped_and_non_ascii_refused() -> None:
    data = bytes(range(256)) * 100
    wrapped = base64.encodebytes(data).decode()  # a line break every 76 characters
    assert decode_base64(wrapped) == data
    assert decode_base64(" \t" + wrapped.replace("\n", "\r\n") + "\f") == data
    assert decode_base64("data:image/png;base64," + wrapped) == data
    assert asyncio.run(decode_base64_off_loop("A" * (OFF_LOOP_BYTES + 4))) == b"\x00" * ((OFF_LOOP_BYTES + 4) * 3 // 4)
    for bad in ("\u00c5AAA", "QUJD\u2028", "QU==QU==", 12, None):
        with pytest.raises(InvalidRequest):
            decode_base64(bad)


@pytest.mark.parametrize("text", ["QUJD=", "QUJD==", "QUJD===", "QQ===", "QUI==", "=QUJD", "QQ=A", "QUJDRA", "Q"])
def test_base64_is_read_strictly(text: str) -> None:
    # Excess padding ("QUJD=") was accepted by b64decode(validate=True); the document's pattern refuses it.
    with pytest.raises(InvalidRequest):
        decode_base64(text)


# Strings near base64: whole and partial quanta, padding, the whitespace stripped, data: prefixes, stray characters.
PIECES = ["QUJD", "QUI", "QQ", "Q", "+/9a", "=", "==", " ", "\n", "\r\n", "\t", "\x0b", "\x0c", "*", ",", "\u00c5"]
BASE64_ISH = st.lists(st.sampled_from([*PIECES, "data:", "data:image/png;base64,"]), max_size=10).map("".join)


@settings(max_examples=500, derandomize=True, database=None)
@given(text=BASE64_ISH)
def test_the_documented_pattern_is_exactly_what_decodes_to_an_image(text: str) -> None:
    """BASE64_PATTERN, read as the fuzzer's validator reads JSON Schema (jsonschema_rs, ECMA-262 dialect), matches
    exactly the strings ``decode_base64`` turns into a non-empty image (an empty one is 400 ``invalid_image``)."""
    documented = jsonschema_rs.is_valid({"type": "string", "pattern": BASE64_PATTERN}, text)
    try:
        accepted = decode_base64(text) != b""
    except InvalidRequest:
        accepted = False
    assert documented == accepted


def test_the_documented_example_is_an_image() -> None:
    assert jsonschema_rs.is_valid({"type": "string", "pattern": BASE64_PATTERN}, EXAMPLE_IMAGE_BASE64)
    assert decode_base64(EXAMPLE_IMAGE_BASE64).startswith(b"\x89PNG")
