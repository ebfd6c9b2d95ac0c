"""num_captions: every odd spelling is a 422, never a 500."""

from __future__ import annotations

import pytest

from captioner.errors import InvalidRequest
from captioner.serving.options import parse_num_captions


@pytest.mark.parametrize(("value", "expected"), [("2", 2), (" 3 ", 3), ("+1", 1), (2, 2), (None, 1), ("", 1)])
def test_good_values(value: object, expected: int) -> None:
    assert parse_num_captions(value, 1, 3) == expected


@pytest.mark.parametrize(
    "value",
    ["\u00b2", "\u0661", "\uff12", "9" * 5000, "1" * 7, "0", "-1", "4", "1.5", "1e2", "0x2", "abc", True, 10**5000,
     2.0],
    ids=["superscript-2", "arabic-indic-1", "fullwidth-2", "5000-digits", "7-digits", "0", "-1", "4", "1.5", "1e2",
         "hex", "abc", "true", "huge-int", "float"],
)  # fmt: skip
def test_odd_values_are_invalid_requests(value: object) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_num_captions(value, 1, 3)
    assert len(refused.value.message) < 200
