"""Where ``captioner caption`` writes its results: JSON Lines or CSV, appended one image at a time.

Each image's result is written and flushed as soon as it is known, so an interrupted run (Ctrl+C, a crash, a
killed job) loses at most the image being written, and ``open_output`` on the same file picks up where it
stopped: ``done`` holds every path already there. A half-written last line (the process died mid-write) is
cut off before appending, so the file stays valid.

JSON Lines: one object per image,
``{"path": ..., "captions": [{"text": ..., "confidence": ...}], "image_sha256": ..., "model": ...}``.
CSV: one row per caption (``path, rank, caption, confidence, image_sha256, model``), ranks from 1 (most
confident); an image the model found no caption for gets one row with an empty rank and caption.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

CSV_COLUMNS = ("path", "rank", "caption", "confidence", "image_sha256", "model")
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


class OutputError(ValueError):
    """The output file can't be used (unknown extension, unreadable, or not ours); the message says why."""


@dataclass(frozen=True)
class ScoredCaption:
    """A caption and its confidence, as the API returns it (``model.Caption`` without the torch import)."""

    text: str
    confidence: float


@dataclass(frozen=True)
class CaptionRecord:
    path: str
    captions: list[ScoredCaption]
    image_sha256: str
    model: str

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "captions": [{"text": c.text, "confidence": c.confidence} for c in self.captions],
            "image_sha256": self.image_sha256,
            "model": self.model,
        }


def path_key(path: str) -> str:
    """How paths are compared for resuming: absolute and normalised, so ``./a.jpg`` and ``a.jpg`` match."""
    return os.path.normcase(os.path.abspath(path))


def output_format(path: str | None) -> str:
    if path is None or path == "-":
        return "jsonl"
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise OutputError(f"--out {path}: the name must end in .jsonl or .csv (that picks the format)")
    return _FORMATS[suffix]


class CaptionOutput:
    """An append-only results file (or stdout), plus the set of paths it already holds."""

    def __init__(self, stream: IO[str], fmt: str, done: set[str], *, owned: bool) -> None:
        self.format = fmt
        self.done = done
        self._stream = stream
        self._owned = owned
        self._csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None

    def write(self, record: CaptionRecord) -> None:
        if self._csv is None:
            text = json.dumps(record.to_json(), ensure_ascii=False) + "\n"
        else:
            buffer = io.StringIO()
            rows = csv.writer(buffer, lineterminator="\n")
            if not record.captions:
                rows.writerow([record.path, "", "", "", record.image_sha256, record.model])
            for rank, caption in enumerate(record.captions, start=1):
                rows.writerow([record.path, rank, caption.text, caption.confidence, record.image_sha256, record.model])
            text = buffer.getvalue()
        # One write per image, then flush: an interruption never leaves an image half-recorded mid-file.
        self._stream.write(text)
        self._stream.flush()
        self.done.add(path_key(record.path))

    def close(self) -> None:
        if self._owned:
            self._stream.close()

    def __enter__(self) -> CaptionOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_output(path: str | None) -> CaptionOutput:
    """Open ``path`` for appending (``None`` or ``-``: stdout, JSON Lines, nothing to resume)."""
    fmt = output_format(path)
    if path is None or path == "-":
        return CaptionOutput(sys.stdout, fmt, set(), owned=False)
    target = Path(path)
    done: set[str] = set()
    if target.exists():
        try:
            data = target.read_bytes()
        except OSError as exc:
            raise OutputError(f"--out {path}: cannot read it to resume ({exc.strerror})") from exc
        # Everything up to the last newline is complete; anything after it is a write cut short.
        complete = len(data) if data.endswith(b"\n") else data.rfind(b"\n") + 1
        if complete:
            done = _read_done(target, data[:complete], fmt)  # refuses a file that isn't ours before touching it
        if complete < len(data):
            print(f"{path}: dropping an incomplete last line left by an interrupted run", file=sys.stderr)
            with target.open("rb+") as handle:
                handle.truncate(complete)
    target.parent.mkdir(parents=True, exist_ok=True)
    stream = target.open("a", encoding="utf-8", newline="")
    if fmt == "csv" and target.stat().st_size == 0:
        stream.write(",".join(CSV_COLUMNS) + "\n")
        stream.flush()
    return CaptionOutput(stream, fmt, done, owned=True)


def _read_done(path: Path, data: bytes, fmt: str) -> set[str]:
    done: set[str] = set()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OutputError(f"--out {path}: not a captions file (not UTF-8 text); choose another file") from exc
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise OutputError(f"--out {path}: not a captions CSV (no 'path' column); choose another file")
        done.update(path_key(row["path"]) for row in reader if row.get("path"))
        return done
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            done.add(path_key(entry["path"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise OutputError(f"--out {path}: line {number} is not a captions record; choose another file") from exc
    return done
