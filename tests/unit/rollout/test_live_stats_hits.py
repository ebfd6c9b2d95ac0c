"""Cache hits in the canary's live statistics (issue 21, item 5.3): counted apart, never toward ``min_requests``
nor the mean confidence, so resending one image can't make a canary judged, nor move its confidence.

A real ``CaptionService`` with the fake captioner (tests/fakes.py: threads, no model): both cache paths, the
fast one (``cached``) and the one inside ``caption``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from captioner.observability.metrics import Metrics
from captioner.serving.live_stats import StatsSnapshot, VariantStats
from captioner.serving.service import CaptionService
from tests.support.fakes import FakeCaptioner
from tests.support.model import tiny_settings


def test_a_hit_is_counted_apart_and_snapshots_subtract_it() -> None:
    stats = VariantStats()
    stats.answered(0.1, 0.9)
    before = stats.snapshot()
    stats.cache_hit()
    stats.cache_hit()
    window = stats.snapshot().minus(before)
    assert (window.requests, window.cache_hits, window.confidence_n) == (0, 2, 0)
    assert stats.snapshot().to_json()["cache_hits"] == 2 and StatsSnapshot().cache_hits == 0


@pytest.mark.anyio
async def test_resending_one_image_adds_hits_not_requests_nor_confidence(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path, batching={"max_wait_ms": 1})
    service = CaptionService(settings, FakeCaptioner(), Metrics(), variant="canary")
    service.start()
    try:
        for _ in range(5):
            await service.caption(b"the same image", 1)  # 1 computed, then 4 hits through caption()
        digest = hashlib.sha256(b"the same image").hexdigest()
        for _ in range(3):
            assert service.cached(digest, 1) is not None  # the fast path's hits
        await service.caption(b"another image", 1)
        snapshot = service.stats.snapshot()
        assert (snapshot.requests, snapshot.cache_hits, snapshot.confidence_n) == (2, 7, 2)
        assert sum(snapshot.latency_counts) == 2
    finally:
        await service.close(5)
