"""The feedback file store (an append-only segment log) and the per-variant approval counts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from captioner.feedback.collector import FeedbackStats
from captioner.feedback.file_store import FileFeedbackStore
from captioner.feedback.store import FeedbackRecord
from tests.support.clock import FakeClock

SHA = "ab" * 32
DAY = 86400.0


def rating(n: int, at: float, **fields: object) -> FeedbackRecord:
    values: dict[str, object] = {"image_sha256": SHA, "caption": f"caption {n}", "rating": 1 + n % 5}
    return FeedbackRecord(**{**values, "variant": "default", "received_at": at, **fields})  # type: ignore[arg-type]


def test_records_come_back_oldest_first_and_a_cut_line_is_skipped(tmp_path: Path) -> None:
    clock = FakeClock(time.time())
    store = FileFeedbackStore(tmp_path, retention_s=DAY, max_records=100, clock=clock)
    for n in range(3):
        asyncio.run(store.add(rating(n, clock(), correction=f"better {n}"), None))
    segment = next(tmp_path.glob("feedback-*.jsonl"))
    with segment.open("ab") as file:
        file.write(b'{"image_sha256": "ab')  # what a crash mid-write leaves

    records = asyncio.run(store.records())

    assert [(r.caption, r.correction) for r in records] == [(f"caption {n}", f"better {n}") for n in range(3)]


def test_the_oldest_segments_go_beyond_max_records(tmp_path: Path) -> None:
    clock = FakeClock(time.time())
    store = FileFeedbackStore(tmp_path, retention_s=DAY, max_records=20, clock=clock)  # segments of 2
    for n in range(50):
        asyncio.run(store.add(rating(n, clock()), None))

    kept = [r.caption for r in asyncio.run(store.records())]

    assert 18 <= len(kept) <= 20  # bounded to within a segment
    assert kept == [f"caption {n}" for n in range(50 - len(kept), 50)]  # the newest, in order
    assert len(list(tmp_path.glob("feedback-*.jsonl"))) <= 10


def test_retention_drops_old_records_and_images(tmp_path: Path) -> None:
    clock = FakeClock(time.time())
    store = FileFeedbackStore(tmp_path, retention_s=DAY, max_records=100, clock=clock)
    asyncio.run(store.add(rating(1, clock()), b"the image"))
    assert asyncio.run(store.image(SHA)) == b"the image"

    clock.advance(2 * DAY)  # the record, its segment (by mtime) and the image are all past the retention
    assert asyncio.run(store.records()) == []
    asyncio.run(store.add(rating(2, clock(), image_sha256="cd" * 32), None))

    assert [r.caption for r in asyncio.run(store.records())] == ["caption 2"]
    assert asyncio.run(store.image(SHA)) is None
    assert len(list(tmp_path.glob("feedback-*.jsonl"))) == 1


def test_image_names_are_only_sha256s(tmp_path: Path) -> None:
    store = FileFeedbackStore(tmp_path, retention_s=DAY, max_records=10)
    with pytest.raises(ValueError):
        asyncio.run(store.image("../../etc/passwd"))


def test_approval_is_the_share_of_ratings_of_four_or_five() -> None:
    stats = FeedbackStats()
    for variant, value in [("a", 5), ("a", 4), ("a", 1), ("b", 3)]:
        stats.record(variant, value)

    assert stats.approval("a") == (3, pytest.approx(2 / 3))
    assert stats.approval("b") == (1, 0.0)
    assert stats.approval("never") == (0, 0.0)
