"""User feedback on captions: keeping each rating, counting it, and the approval ratio per variant.

A record rates one caption of one image (named by its SHA-256) from 1 to 5, optionally with the caption the
user would have wanted. Records are kept for ``feedback.retention_s``, at most ``feedback.max_records`` of
them (the oldest go first): in Redis when the replicas share one (``cache.redis_url`` or ``jobs.redis_url``),
so every replica's feedback ends up in one place, else in JSON Lines files under ``feedback.path``. An image
is kept only when the client sends one and ``feedback.keep_images`` is on, and never longer than a record.

``FeedbackStats`` counts this process's ratings per variant, for the canary analysis: the approval ratio is the
share of ratings of 4 or 5. Only ratings that count are in it: a caller's first rating of an image captioned for
them (``served.py``); the others are kept, marked ``counted: false``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from captioner.config import Settings
from captioner.errors import Overloaded
from captioner.feedback.file_store import FileFeedbackStore
from captioner.feedback.redis_store import RedisFeedbackStore
from captioner.feedback.served import ServedImages
from captioner.feedback.store import FeedbackRecord, FeedbackStore
from captioner.observability.metrics import Metrics
from captioner.shared_state.redis_client import RedisUnavailable

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
    """What ``POST /api/v1/feedback`` does once the request is valid: keep it, and count it if it counts."""

    def __init__(self, store: FeedbackStore, metrics: Metrics, *, keep_images: bool, served: ServedImages) -> None:
        self.store = store
        self.metrics = metrics
        self.keep_images = keep_images
        self.served = served  # what was captioned for whom: the caption routes tell it (served.py)
        self.stats = FeedbackStats()

    async def add(
        self, record: FeedbackRecord, image: bytes | None, *, caller: str, proven: bool = False
    ) -> FeedbackRecord:
        """Keep ``record`` from ``caller``; it counts toward its variant's approval only by ``served.py``'s rule.

        ``proven``: ``record.variant`` is known to have served the image to the caller (their job). Otherwise the
        variant remembered serving it wins over the record's (the one A/B routing would pick now). Returns the
        record as kept.
        """
        try:
            earned = await self.served.credit(
                caller, record.image_sha256, proven_variant=record.variant if proven else None
            )
        except RedisUnavailable as exc:  # as for the store itself: no rating is kept where it can't be judged
            raise Overloaded("the feedback store (Redis) is unavailable", retry_after_s=1) from exc
        kept = image if self.keep_images else None
        record = replace(
            record, variant=earned.variant or record.variant, counted=earned.counted, image_kept=kept is not None
        )
        try:
            await self.store.add(record, kept)
        except BaseException:
            if earned.counted:
                await self.served.forget_rating(caller, record.image_sha256)
            raise
        self.metrics.feedback.labels(record.variant, str(record.rating)).inc()
        if earned.counted:
            self.stats.record(record.variant, record.rating)
        return record

    async def aclose(self) -> None:
        await self.served.aclose()  # first: it may share the store's Redis client
        await self.store.aclose()


def build_feedback_store(settings: Settings, metrics: Metrics) -> FeedbackStore:
    """Redis when the replicas share one, else files under ``feedback.path``."""
    options = settings.feedback
    url = settings.jobs.redis_url or settings.cache.redis_url
    if url:
        return RedisFeedbackStore.connect(url, settings, metrics)
    return FileFeedbackStore(options.path, retention_s=options.retention_s, max_records=options.max_records)


def build_feedback(settings: Settings, metrics: Metrics) -> Feedback:
    options = settings.feedback
    store = build_feedback_store(settings, metrics)
    served = ServedImages(
        served_ttl_s=options.served_ttl_s,
        rated_ttl_s=options.retention_s,
        max_entries=options.max_served,
        redis=store.redis if isinstance(store, RedisFeedbackStore) else None,  # shared when the ratings are
    )
    return Feedback(store, metrics, keep_images=options.keep_images, served=served)
