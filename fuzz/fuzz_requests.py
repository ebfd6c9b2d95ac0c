"""atheris harness for the request side (issue 13's input classes): the bytes of a request body or parameter ->
JSON parsing (nesting, numbers, UTF-8), base64 decoding, ``num_captions`` from text, the rate-limit bucket of a
forwarded address, and the ICO pixel check.

The property: each either succeeds or raises a ``CaptionerError`` whose status is a 4xx; a bucket key is short
and starts ``ip:``. Anything else (a RecursionError, a ValueError from ``int``, a 5xx) is a finding.
Run it like fuzz_images.py (see fuzz/README.md), with ``python fuzz/seeds.py --requests CORPUS`` for seeds.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

MAX_PIXELS = 4_000_000


def _client_error(error: Any) -> str:
    from captioner.errors import CaptionerError

    if not isinstance(error, CaptionerError) or not 400 <= error.status_code < 500:
        raise error
    return str(error.code)


def run_one(data: bytes) -> list[str]:
    """Run every target on ``data``; the outcome of each ("ok" or a client-error code). Bugs propagate."""
    from captioner.errors import CaptionerError
    from captioner.guard.forwarded import bucket_for
    from captioner.http.json_body import decode_base64, parse_json
    from captioner.model.pixel_guard import check_icon
    from captioner.serving.options import parse_num_captions

    outcomes: list[str] = []

    def attempt(target: Any, *args: Any) -> Any:
        try:
            result = target(*args)
        except CaptionerError as error:
            outcomes.append(_client_error(error))
            return None
        outcomes.append("ok")
        return result

    payload = attempt(lambda: asyncio.run(parse_json(data)))
    text = data.decode("utf-8", "replace")
    if isinstance(payload, dict):
        attempt(decode_base64, payload.get("image"))
        attempt(parse_num_captions, payload.get("num_captions"), 1, 3)
    attempt(decode_base64, text)
    attempt(parse_num_captions, text, 1, 3)
    attempt(check_icon, data, MAX_PIXELS)
    bucket = bucket_for(text)
    if not bucket.startswith("ip:") or len(bucket) > 48:
        raise AssertionError(f"bad bucket key {bucket!r}")
    return outcomes


def TestOneInput(data: bytes) -> None:  # the name atheris and libFuzzer look for
    run_one(data)


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["captioner"]):
        import captioner.guard.forwarded
        import captioner.http.json_body
        import captioner.model.pixel_guard
        import captioner.serving.options  # noqa: F401
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
