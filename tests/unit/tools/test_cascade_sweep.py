"""The cascade calibration's sweep and choice (tools/cascade/sweep.py): pure, on hand-made figures."""

from __future__ import annotations

import pytest

from captioner.tools.cascade.sweep import ImageFigures, calibrate, candidate_thresholds


def figures(*rows: tuple[float, float, float]) -> list[ImageFigures]:
    return [ImageFigures(confidence, first, second) for confidence, first, second in rows]


def test_thresholds_are_zero_the_midpoints_and_one() -> None:
    assert candidate_thresholds([0.8, 0.2, 0.4, 0.4]) == pytest.approx([0.0, 0.3, 0.6, 1.0])
    assert candidate_thresholds([0.5]) == [0.0, 1.0]


def test_the_most_time_saved_within_the_cider_drop_is_chosen() -> None:
    # Confident images are the first model's easy wins; the unsure one it gets wrong.
    images = figures((0.9, 1.0, 1.0), (0.8, 1.0, 1.0), (0.2, 0.0, 1.0), (0.7, 1.0, 1.0))
    chosen = calibrate(images, first_s=0.1, second_s=1.0, max_cider_drop=0.03)
    assert chosen.threshold == pytest.approx(0.45)  # escalates only the 0.2 image
    assert chosen.escalated_share == 0.25
    assert chosen.model_time_saved == pytest.approx(1 - (0.1 + 0.25))
    assert (chosen.cider_first, chosen.cider_second, chosen.cider_cascade) == (0.75, 1.0, 1.0)
    assert [row.threshold for row in chosen.rows] == pytest.approx([0.0, 0.45, 0.75, 0.85, 1.0])


def test_a_looser_drop_lets_more_through_and_time_saved_falls_as_the_threshold_rises() -> None:
    images = figures((0.9, 1.0, 1.0), (0.3, 0.9, 1.0), (0.2, 0.5, 1.0))
    strict = calibrate(images, first_s=0.2, second_s=1.0, max_cider_drop=0.0)
    loose = calibrate(images, first_s=0.2, second_s=1.0, max_cider_drop=0.5)
    assert strict.threshold == pytest.approx(0.6) and strict.cider_cascade == 1.0
    assert loose.threshold == 0.0 and loose.escalated_share == 0.0
    saved = [row.model_time_saved for row in strict.rows]
    shares = [row.escalated_share for row in strict.rows]
    assert saved == sorted(saved, reverse=True) and shares == sorted(shares)


def test_ties_go_to_the_higher_cider_then_the_higher_threshold() -> None:
    # A certain image: thresholds 0.75 and 1.0 escalate the same set (everything but it): the same time and CIDEr.
    images = figures((1.0, 0.0, 1.0), (0.5, 0.0, 1.0))
    chosen = calibrate(images, first_s=0.1, second_s=1.0, max_cider_drop=0.6)
    assert chosen.threshold == 1.0 and chosen.escalated_share == 0.5


def test_nothing_qualifying_escalates_everything_below_certainty() -> None:
    images = figures((1.0, 0.0, 1.0), (1.0, 0.0, 1.0))  # the first model is sure, and always wrong
    chosen = calibrate(images, first_s=0.1, second_s=1.0, max_cider_drop=0.03)
    assert not any(row.qualifies for row in chosen.rows)
    assert (chosen.threshold, chosen.escalated_share) == (1.0, 0.0)


def test_a_first_model_as_slow_as_the_second_saves_nothing() -> None:
    images = figures((0.9, 1.0, 1.0), (0.1, 1.0, 1.0))
    chosen = calibrate(images, first_s=1.0, second_s=1.0)
    assert chosen.threshold == 0.0 and chosen.model_time_saved == 0.0


def test_no_images_or_no_second_time_is_refused() -> None:
    with pytest.raises(ValueError, match="no image"):
        calibrate([], first_s=0.1, second_s=1.0)
    with pytest.raises(ValueError, match="positive"):
        calibrate(figures((0.5, 1.0, 1.0)), first_s=0.1, second_s=0.0)


def test_the_table_has_a_row_per_threshold_and_marks_the_choice() -> None:
    from captioner.tools.cascade.command import format_table

    chosen = calibrate(figures((0.9, 1.0, 1.0), (0.2, 0.0, 1.0)), first_s=0.1, second_s=1.0, max_cider_drop=0.03)
    report = {"num_images": 2, "first_s": 0.1, "second_s": 1.0, "tokenizer": "python"}
    lines = format_table(chosen, report)
    assert lines[0].startswith("2 images; model time per image: first 100.00 ms, second 1000.00 ms")
    assert len(lines) == 2 + len(chosen.rows)
    assert lines[2].split() == ["0.0000", "0.0%", "90.0%", "0.5000", "(CIDEr", "too", "low)"]
    assert lines[3].split() == ["0.5500", "50.0%", "40.0%", "1.0000", "<-", "chosen"]
