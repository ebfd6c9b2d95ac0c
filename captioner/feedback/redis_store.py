"""Feedback in Redis, shared by the replicas: one stream of records, and kept images as keys that expire.

The stream is trimmed on every append to both bounds, exactly (ratings come slowly): ``MAXLEN max_records`` and
``MINID`` of the retention (stream ids are millisecond timestamps). While Redis is down a rating is refused with
503 + Retry-After, like a new async job, rather than kept where no replica could find it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from captioner.config import Settings
from captioner.errors import Overloaded
from captioner.feedback.store import FeedbackRecord
from captioner.observability.metrics import Metrics
from captioner.shared_state.redis_client import RedisClient, RedisUnavailable

STREAM = "captioner:feedback:v1"
IMAGE_PREFIX = "captioner:feedback:image:v1:"
_PAGE = 1000


class RedisFeedbackStore:
    def __init__(
        self, redis: RedisClient, *, retention_s: float, max_records: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = redis
        self.retention_s = retention_s
        self.max_records = max_records
        self._clock = clock

    @classmethod
    def connect(cls, url: str, settings: Settings, metrics: Metrics) -> RedisFeedbackStore:
        redis = RedisClient(
            url,
            name="feedback",
            timeout_s=settings.cache.redis_timeout_s,
            on_error=lambda operation: metrics.feedback_store_errors.labels(operation).inc(),
        )
        options = settings.feedback
        return cls(redis, retention_s=options.retention_s, max_records=options.max_records)

    async def add(self, record: FeedbackRecord, image: bytes | None) -> None:
        oldest_ms = int((self._clock() - self.retention_s) * 1000)

        async def append(redis: Any) -> None:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.xadd(STREAM, {"r": record.to_json()}, maxlen=self.max_records, approximate=False)
                pipe.xtrim(STREAM, minid=oldest_ms, approximate=False)
                await pipe.execute()

        try:
            if image is not None:
                await self.redis.set(IMAGE_PREFIX + record.image_sha256, image, ttl_s=self.retention_s)
            await self.redis.execute("feedback_add", append)
        except RedisUnavailable as exc:
            retry = max(1.0, self.redis.breaker.retry_in_s)
            raise Overloaded("the feedback store (Redis) is unavailable", retry_after_s=retry) from exc

    async def records(self) -> list[FeedbackRecord]:
        cutoff = self._clock() - self.retention_s
        found: list[FeedbackRecord] = []
        start = "-"
        while True:
            page = await self.redis.execute("feedback_read", _page_after(start))
            for _, fields in page:
                record = FeedbackRecord.from_json(fields[b"r"])
                if record.received_at >= cutoff:
                    found.append(record)
            if len(page) < _PAGE:
                return found
            start = "(" + page[-1][0].decode()  # exclusive: after the last id read

    async def image(self, image_sha256: str) -> bytes | None:
        return await self.redis.get(IMAGE_PREFIX + image_sha256)

    async def aclose(self) -> None:
        await self.redis.aclose()


def _page_after(start: str) -> Callable[[Any], Awaitable[list[tuple[bytes, dict[bytes, bytes]]]]]:
    async def read(redis: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
        page: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(STREAM, min=start, count=_PAGE)
        return page

    return read
