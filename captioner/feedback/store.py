"""A feedback record as stored, and what a store of them does (files: ``feedback_file``; Redis: ``feedback_redis``)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class FeedbackRecord:
    image_sha256: str
    caption: str
    rating: int
    variant: str
    job_id: str | None = None
    correction: str | None = None
    image_kept: bool = False
    # Counted toward the variant's approval: the caller's first rating of an image captioned for them
    # (feedback/served.py). Records from before this field existed read as counted, as they were.
    counted: bool = True
    received_at: float = field(default_factory=time.time)  # wall clock: records are shared between machines
    feedback_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, line: bytes | str) -> FeedbackRecord:
        data: dict[str, Any] = json.loads(line)
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


class FeedbackStore(Protocol):
    async def add(self, record: FeedbackRecord, image: bytes | None) -> None:
        """Keep ``record`` (and ``image``, already checked against ``keep_images``); ``Overloaded`` when it can't."""

    async def records(self) -> list[FeedbackRecord]:
        """Every record still within the retention, oldest first."""

    async def image(self, image_sha256: str) -> bytes | None:
        """A kept image, or None."""

    async def aclose(self) -> None: ...
