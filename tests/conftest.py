"""Shared fixtures: an untrained tiny BLIP (made once per session) and a live server on a free port."""

from __future__ import annotations

import asyncio
import io
import re
import socket
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from PIL import Image, ImageDraw

from captioner.config import Settings, load_settings
from captioner.http.app import create_app
from captioner.model.blip import BlipCaptioner
from captioner.observability.metrics import Metrics

# The repository's root, for tests that read deploy/, fuzz/, docs/ or config.yaml.
REPO_ROOT = Path(__file__).resolve().parent.parent


SYSTEM_DIR = Path(__file__).resolve().parent / "system"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/system starts processes, servers, Redis, nginx or Chromium: mark it ``system``."""
    for item in items:
        if SYSTEM_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.system)


# No skips: a test that can't run here fails, so a missing tool (openssl, redis-server, chromium...) can't hide
# as a green run. Only tests marked ``gpu`` may skip, on machines without one. Deselection (``-m "not system"``)
# happens at collection and is no skip, so it is unaffected.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    if report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("gpu") is None:
        report.outcome = "failed"
        report.longrepr = f"this test skipped, and skips fail the suite (docs/testing.md): {_skip_reason(report)}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    report: pytest.CollectReport = yield
    if report.skipped:  # a module-level skip or importorskip
        report.outcome = "failed"
        report.longrepr = f"this module skipped, and skips fail the suite (docs/testing.md): {_skip_reason(report)}"
    return report


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from captioner.tools.init_model import write_untrained_model

    return write_untrained_model(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0)


def photo(seed: int, size: tuple[int, int] = (160, 120), fmt: str = "PNG") -> bytes:
    """A distinct synthetic 'photo' per seed: a gradient background with a few coloured shapes."""
    import random

    rng = random.Random(seed)
    width, height = size
    base = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", size, base)  # type: ignore[arg-type]
    draw = ImageDraw.Draw(image)
    for y in range(0, height, 4):
        shade = tuple((c + y * rng.randrange(1, 4)) % 256 for c in base)
        draw.rectangle([0, y, width, y + 3], fill=shade)  # type: ignore[arg-type]
    for _ in range(4):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        box = [x0, y0, x0 + rng.randrange(10, width // 2), y0 + rng.randrange(10, height // 2)]
        draw.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))  # type: ignore[arg-type]
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def black_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of any size, streamed through zlib: even 900 megapixels take about 100 KB."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tiny_blip(model_dir: Path, **model: object) -> BlipCaptioner:
    """The tiny BLIP loaded in this process, with some ``model.*`` options changed."""
    settings = tiny_settings(model_dir).replace("model", **model)
    return BlipCaptioner(model_dir, settings.model, settings.generation, settings.limits.max_pixels)


class LiveServer:
    """uvicorn serving a real app (real model, real sockets) on a background thread."""

    def __init__(self, settings: Settings, **app_options: Any) -> None:
        """``app_options`` go to ``create_app`` (a ready model as ``captioner``, an ``on_fatal`` hook)."""
        self.settings = settings
        self.metrics = Metrics()
        self.app = create_app(settings, metrics=self.metrics, **app_options)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not become ready")

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "the server thread did not stop"

    def metric(self, name: str, labels: str = "") -> float:
        """The sum of the series called ``name`` in /metrics whose labels include ``labels`` (0 when none).

        ``labels`` is Prometheus syntax, e.g. ``'status="200"'``; series with further labels (such as
        ``variant``) are summed, so a test names only the labels it cares about.
        """
        return metric_value(httpx.get(self.url + "/metrics", timeout=60).text, name, labels)


def metric_value(text: str, name: str, labels: str = "") -> float:
    wanted = {pair for pair in re.findall(r'(\w+="[^"]*")', labels)}
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        have = set(re.findall(r'(\w+="[^"]*")', match.group(2) or ""))
        if wanted <= have:
            total += float(match.group(3))
    return total


def tiny_settings(model_dir: Path, **sections: dict[str, Any]) -> Settings:
    """The tiny model's settings, on the CPU even where there is a GPU: tests compare against CPU references and
    assert ``device == "cpu"``. A test about GPU behaviour sets the device itself and is marked ``gpu``."""
    settings = load_settings(None, {})
    # The model on a thread of the test process: an in-process server then starts in a second, not the child's
    # several (the default process worker has tests of its own, and every system test runs it).
    settings = settings.replace("model", path=str(model_dir), name="test/tiny-blip", device="cpu", worker="thread")
    settings = settings.replace("server", preprocess_workers=2)
    # Ratings a test posts go to a folder of their own, never into the working directory.
    settings = settings.replace("feedback", path=tempfile.mkdtemp(prefix="captioner-feedback-"))
    for section, values in sections.items():
        settings = settings.replace(section, **values)
    return settings


@pytest.fixture(scope="module")
def live_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    with LiveServer(tiny_settings(tiny_model_dir)) as server:
        yield server
