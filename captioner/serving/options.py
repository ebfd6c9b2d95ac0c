"""Per-request caption options, validated alike for HTTP requests and the offline tools."""

from __future__ import annotations

from typing import Any

from captioner.errors import InvalidRequest


def parse_num_captions(value: Any, default: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidRequest("num_captions must be an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    else:
        raise InvalidRequest(f"num_captions must be an integer between 1 and {maximum}, got {value!r}")
    if not 1 <= number <= maximum:
        raise InvalidRequest(f"num_captions must be between 1 and {maximum}, got {number}")
    return number
