"""Where a server's CPU time goes, measured with py-spy (sampling a live process, no code changes).

``profile_pid`` samples a process for a while and sorts its busy samples into the stages of our data path, so
that a ratio short of its goal comes with a measured reason rather than a guess.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# First match wins, checked from the innermost frame outwards: a frame name (function, or file path) -> stage.
_MODEL = ("BlipCaptioner.caption_batch", "ProcessCaptioner.caption_batch", "GenerationMixin", "_sdpa_forward")
_STAGES = (
    *((needle, "model") for needle in _MODEL),
    ("ImagePreprocessor", "decode+resize"),
    ("DriftWatch", "drift features"),
    ("captioner/model/preprocessing.py", "decode+resize"),
    ("sha256", "hashing"),
    ("parse_caption_request", "HTTP parsing"),
    ("b64decode", "HTTP parsing"),
    ("httptools", "HTTP parsing"),
    ("h11", "HTTP parsing"),
    ("generate_latest", "metrics"),
    ("prometheus_client", "metrics"),
    ("orjson", "JSON encoding"),
    ("Batcher", "batcher"),
    ("CaptionCache", "cache"),
    ("starlette", "Starlette"),
    ("uvicorn", "uvicorn"),
    ("asyncio", "event loop"),
    ("uvloop", "event loop"),
)


@dataclass
class Profile:
    samples: int
    stages: dict[str, float] = field(default_factory=dict)  # share of busy samples, 0..1
    top_functions: list[tuple[str, float]] = field(default_factory=list)  # innermost frame, share

    def line(self, limit: int = 4) -> str:
        stages = ", ".join(f"{name} {share:.0%}" for name, share in list(self.stages.items())[:limit])
        return f"{stages} ({self.samples} samples)"


def available() -> bool:
    return shutil.which("py-spy") is not None or (Path(_venv_bin()) / "py-spy").exists()


def _venv_bin() -> str:
    import sys

    return str(Path(sys.executable).parent)


def profile_pid(pid: int, duration_s: float, rate: int = 100) -> Profile | None:
    """Sample ``pid`` for ``duration_s`` (busy threads only); None when py-spy is missing or not permitted."""
    spy = shutil.which("py-spy") or str(Path(_venv_bin()) / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "raw.txt"
        command = [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(duration_s)))]
        command += ["--rate", str(rate), "--format", "raw", "--nonblocking", "--output", str(out)]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=duration_s + 60)
        except (OSError, subprocess.SubprocessError):
            return None
        if not out.exists():
            return None
        return summarise(out.read_text())


def summarise(raw: str) -> Profile:
    """py-spy's raw format (``frame;frame;... count`` per line, outermost first) -> stage shares."""
    stages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1].startswith("_worker (") or frames[-1].startswith("select ("):
            continue  # an idle pool thread or selector that py-spy still counted as running
        total += count
        leaves[frames[-1].split(" (")[0]] += count
        stages[_stage(frames)] += count
    if total == 0:
        return Profile(samples=0)
    return Profile(
        samples=total,
        stages={name: n / total for name, n in stages.most_common()},
        top_functions=[(name, n / total) for name, n in leaves.most_common(8)],
    )


def _stage(frames: list[str]) -> str:
    for frame in frames:  # outermost first: everything under caption_batch is the model's
        if any(needle in frame for needle in _MODEL):
            return "model"
    for frame in reversed(frames):
        for needle, stage in _STAGES:
            if needle in frame:
                return stage
    return "other"
