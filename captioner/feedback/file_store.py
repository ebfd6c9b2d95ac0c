"""Feedback in local files: an append-only log of JSON Lines segments, and the kept images beside it.

Like a Kafka log, the records go to numbered segment files of ``max_records / 10`` lines each; bounds are kept
by deleting whole segments: one whose last write is older than the retention, or the oldest while the log holds
more than ``max_records``. Nothing is ever rewritten, so a crash can at worst cut the last line short (readers
skip it). Images are files named by their SHA-256 under ``images/``, deleted with the retention too.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from captioner.feedback.store import FeedbackRecord

SHA256 = re.compile(r"[0-9a-f]{64}")
SEGMENTS = 10  # segments a full log spans: the bound is kept to within a tenth
_PRUNE_EVERY_S = 3600.0


class FileFeedbackStore:
    def __init__(
        self, folder: str | Path, *, retention_s: float, max_records: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.folder = Path(folder)
        self.images = self.folder / "images"
        self.retention_s = retention_s
        self.max_records = max_records
        self.segment_records = max(1, max_records // SEGMENTS)
        self._clock = clock
        self._lock = threading.Lock()  # appends come from worker threads
        self._open_lines: int | None = None  # lines in the newest segment, counted on first use
        self._pruned_at = float("-inf")

    async def add(self, record: FeedbackRecord, image: bytes | None) -> None:
        await asyncio.to_thread(self._add, record, image)

    async def records(self) -> list[FeedbackRecord]:
        return await asyncio.to_thread(self._records)

    async def image(self, image_sha256: str) -> bytes | None:
        path = self._image_path(image_sha256)
        return await asyncio.to_thread(path.read_bytes) if path.is_file() else None

    async def aclose(self) -> None:
        pass  # every append is written through; nothing is held open

    # -- in a worker thread -------------------------------------------------------------------------------

    def _add(self, record: FeedbackRecord, image: bytes | None) -> None:
        with self._lock:
            if self._clock() - self._pruned_at >= _PRUNE_EVERY_S:
                self._prune()
            segment = self._segment_for_append()
            if image is not None:
                self.images.mkdir(parents=True, exist_ok=True)
                self._image_path(record.image_sha256).write_bytes(image)
            with segment.open("ab") as file:
                file.write(record.to_json() + b"\n")
            self._open_lines = (self._open_lines or 0) + 1

    def _image_path(self, image_sha256: str) -> Path:
        if not SHA256.fullmatch(image_sha256):  # a file name: never a path from outside
            raise ValueError(f"not a SHA-256: {image_sha256!r}")
        return self.images / image_sha256

    def _segments(self) -> list[Path]:
        """Oldest first: the names are zero-padded creation times."""
        return sorted(self.folder.glob("feedback-*.jsonl"))

    def _segment_for_append(self) -> Path:
        segments = self._segments()
        if segments and self._open_lines is None:
            self._open_lines = _count_lines(segments[-1])
        if segments and (self._open_lines or 0) < self.segment_records:
            return segments[-1]
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = int(self._clock() * 1e9)
        if segments:  # strictly increasing names, whatever the clock does
            stamp = max(stamp, _created_ns(segments[-1]) + 1)
        segment = self.folder / f"feedback-{stamp:020d}.jsonl"
        segment.touch()
        self._open_lines = 0
        self._prune()  # the new segment may push the oldest out
        return segment

    def _prune(self) -> None:
        self._pruned_at = now = self._clock()
        segments = self._segments()
        doomed = [s for s in segments if _mtime(s) < now - self.retention_s]
        kept = [s for s in segments if s not in doomed]
        # Count every segment as full (the newest will be): the log then never holds more than max_records.
        while len(kept) > 1 and len(kept) * self.segment_records > self.max_records:
            doomed.append(kept.pop(0))
        for segment in doomed:
            segment.unlink(missing_ok=True)
        if segments and segments[-1] in doomed:
            self._open_lines = None
        # An image goes with the retention, or with the oldest segment its record could still be in.
        cutoff = max(now - self.retention_s, _created_ns(kept[0]) / 1e9 if kept else now)
        if self.images.is_dir():
            for image in self.images.iterdir():
                if _mtime(image) < cutoff:
                    image.unlink(missing_ok=True)

    def _records(self) -> list[FeedbackRecord]:
        cutoff = self._clock() - self.retention_s
        found: list[FeedbackRecord] = []
        for segment in self._segments():
            with segment.open("rb") as file:
                for line in file:
                    try:
                        record = FeedbackRecord.from_json(line)
                    except (ValueError, TypeError):
                        continue  # a line cut short by a crash
                    if record.received_at >= cutoff:
                        found.append(record)
        return found


def _count_lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(1 for _ in file)


def _created_ns(segment: Path) -> int:
    return int(segment.stem.removeprefix("feedback-"))


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return float("inf")  # gone already: nothing to delete
