"""User feedback on captions: keeping each rating, counting it, and the approval ratio per variant.

A record rates one caption of one image (named by its SHA-256) from 1 to 5, optionally with the caption the
user would have wanted. Records are kept for ``feedback.retention_s``, at most ``feedback.max_records`` of
them (the oldest go first): in Redis when the replicas share one (``cache.redis_url`` or ``jobs.redis_url``),
so every replica's feedback ends up in one place, else in JSON Lines files under ``feedback.path``. An image
is kept only when the client sends one and ``feedback.keep_images`` is on, and never longer than a record.

``FeedbackStats`` counts this process's ratings per variant, for the canary analysis: the approval ratio is the
share of ratings of 4 or 5.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict

from captioner.config import Settings
from captioner.feedback.file_store import FileFeedbackStore
from captioner.feedback.redis_store import RedisFeedbackStore
from captioner.feedback.store import FeedbackRecord, FeedbackStore
from captioner.observability.metrics import Metrics

APPROVED = 4  # ratings at or above this count as approval (the web page's thumbs up sends 5, down 1)
UNKNOWN_VARIANT = "unknown"


class FeedbackStats:
    """Ratings received by this process, per variant."""

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {}  # variant -> [ratings, approvals]

    def record(self, variant: str, rating: int) -> None:
        counts = self._counts.setdefault(variant, [0, 0])
        counts[0] += 1
        counts[1] += rating >= APPROVED

    def approval(self, variant: str) -> tuple[int, float]:
        """(ratings, share of them that approve); (0, 0.0) before the first rating."""
        ratings, approvals = self._counts.get(variant, (0, 0))
        return ratings, approvals / ratings if ratings else 0.0

    def variants(self) -> Iterable[str]:
        return tuple(self._counts)


class Feedback:
    """What ``POST /api/v1/feedback`` does once the request is valid: keep it, count it."""

    def __init__(self, store: FeedbackStore, metrics: Metrics, *, keep_images: bool) -> None:
        self.store = store
        self.metrics = metrics
        self.keep_images = keep_images
        self.stats = FeedbackStats()

    async def add(self, record: FeedbackRecord, image: bytes | None) -> None:
        kept = image if self.keep_images else None
        if kept is not None:
            record = FeedbackRecord(**{**asdict(record), "image_kept": True})
        await self.store.add(record, kept)
        self.metrics.feedback.labels(record.variant, str(record.rating)).inc()
        self.stats.record(record.variant, record.rating)


def build_feedback_store(settings: Settings, metrics: Metrics) -> FeedbackStore:
    """Redis when the replicas share one, else files under ``feedback.path``."""
    options = settings.feedback
    url = settings.jobs.redis_url or settings.cache.redis_url
    if url:
        return RedisFeedbackStore.connect(url, settings, metrics)
    return FileFeedbackStore(options.path, retention_s=options.retention_s, max_records=options.max_records)


def build_feedback(settings: Settings, metrics: Metrics) -> Feedback:
    return Feedback(build_feedback_store(settings, metrics), metrics, keep_images=settings.feedback.keep_images)
