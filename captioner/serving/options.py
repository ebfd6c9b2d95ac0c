"""Per-request caption options, validated alike for HTTP requests and the offline tools.

``num_captions`` from text (a query parameter, a form field) is ASCII digits only, at most six of them:
``str.isdigit`` also accepts superscripts and other scripts' digits, which ``int`` then rejects or reads, and
``int`` refuses strings of more than 4300 digits with a ValueError; each of those was a 500 before.
"""

from __future__ import annotations

import re
from typing import Any

from captioner.errors import InvalidRequest

# An optional sign (so "-1" is "out of range", not "not a number"), then 1 to 6 ASCII digits.
_INTEGER = re.compile(r"[+-]?[0-9]{1,6}", re.ASCII)
_MAX_SHOWN = 20  # characters of a bad value echoed back in the error message


def parse_num_captions(value: Any, default: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidRequest("num_captions must be an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip(" \t")):
        number = int(value.strip(" \t"))
    else:
        shown = value[:_MAX_SHOWN] + "..." if isinstance(value, str) and len(value) > _MAX_SHOWN else value
        raise InvalidRequest(f"num_captions must be an integer between 1 and {maximum}, got {shown!r}")
    if not 1 <= number <= maximum:
        shown = str(number) if abs(number) < 10**6 else "a number that large"  # str() of a huge int raises
        raise InvalidRequest(f"num_captions must be between 1 and {maximum}, got {shown}")
    return number
