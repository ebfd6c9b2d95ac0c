"""Which queued requests join the running set (captioner/serving/decode_admission.py)."""

from __future__ import annotations

from captioner.serving.decode_admission import admissible


def test_requests_join_in_order_while_their_rows_fit() -> None:
    assert admissible([3, 3, 3], rows_in_use=0, max_rows=6) == 2
    assert admissible([3, 3], rows_in_use=3, max_rows=6) == 1
    assert admissible([3], rows_in_use=6, max_rows=6) == 0
    assert admissible([], rows_in_use=0, max_rows=6) == 0


def test_a_request_that_does_not_fit_holds_back_the_ones_behind_it() -> None:
    assert admissible([6, 1, 1], rows_in_use=3, max_rows=6) == 0  # no overtaking: the wide one would starve


def test_a_request_wider_than_the_bound_joins_an_empty_set_alone() -> None:
    assert admissible([8, 1], rows_in_use=0, max_rows=6) == 1
    assert admissible([8], rows_in_use=1, max_rows=6) == 0
