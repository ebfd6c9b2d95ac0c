"""The drift monitor: PSI arithmetic, image features, drift detected (and not imagined), alerts, persistence."""

from __future__ import annotations

import functools
import json
import math
import random
import threading
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from captioner.observability.drift_features import (
    INPUT_NUMERIC,
    InputFeatures,
    OutputFeatures,
    input_features,
    output_features,
)
from captioner.observability.psi import DriftMonitor, psi

INPUTS = (*INPUT_NUMERIC, "format")


def normal_photo(rng: random.Random) -> InputFeatures:
    """A 'normal photo': roughly 640x480, mid brightness, a few saturated shapes."""
    width, height = rng.randint(560, 800), rng.randint(400, 600)
    image = Image.new("RGB", (width, height), tuple(rng.randint(70, 190) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(5):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        colour = tuple(rng.choice((rng.randint(0, 60), rng.randint(180, 255))) for _ in range(3))
        draw.ellipse([x0, y0, x0 + rng.randint(40, 300), y0 + rng.randint(40, 300)], fill=colour)
    fmt = rng.choice(("JPEG", "JPEG", "JPEG", "PNG", "WEBP"))
    return input_features(image, fmt=fmt, n_bytes=rng.randint(60_000, 250_000), width=width, height=height)


def dark_tiny(rng: random.Random) -> InputFeatures:
    """A very dark 32x32 thumbnail."""
    image = Image.new("RGB", (32, 32), tuple(rng.randint(0, 12) for _ in range(3)))
    ImageDraw.Draw(image).rectangle([4, 4, 4 + rng.randint(2, 20), 4 + rng.randint(2, 20)], fill=(30, 20, 25))
    return input_features(image, fmt=rng.choice(("JPEG", "PNG")), n_bytes=rng.randint(400, 2_000), width=32, height=32)


@functools.cache
def sample(kind: str, seed: int, n: int = 300) -> tuple[InputFeatures, ...]:
    rng = random.Random(seed)
    make = normal_photo if kind == "normal" else dark_tiny
    return tuple(make(rng) for _ in range(n))


DOG_WORDS = ("dog", "park", "grass", "ball", "running", "brown", "playing", "field", "frisbee", "puppy")
CAR_WORDS = ("car", "street", "parked", "red", "building", "road", "traffic", "city", "bus", "light")


def captions(
    seed: int, n: int, *, words: tuple[str, ...], confidence: float, length: tuple[int, int]
) -> list[OutputFeatures]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = "a " + " ".join(rng.choice(words) for _ in range(rng.randint(*length) - 1))
        conf = min(0.99, max(0.01, rng.gauss(confidence, 0.05)))
        out.append(output_features(text, conf))
    return out


def score(scores: dict[str, float | None], name: str) -> float:
    value = scores[name]
    assert value is not None, name
    return value


class Alerts:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def __call__(self, feature: str, value: float) -> None:
        self.calls.append((feature, value))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def test_psi_matches_hand_computed_values() -> None:
    # (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5) = 0.25 ln 2 + 0.25 ln 1.5 = 0.274653...
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.2746530722, abs=1e-9)
    assert psi([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]) == 0.0
    # empty bins count as 1e-4: 2 * (1 - 1e-4) * ln(1e4) = 18.4188...
    assert psi([1.0, 0.0], [0.0, 1.0]) == pytest.approx(2 * (1 - 1e-4) * math.log(1e4))
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [1.0])


def test_input_features_of_plain_images() -> None:
    grey = input_features(Image.new("RGB", (400, 200), (100, 100, 100)), fmt="png", n_bytes=7, width=400, height=200)
    assert grey == InputFeatures(400, 200, 2.0, pytest.approx(100.0), pytest.approx(0.0), "PNG", 7)  # type: ignore[arg-type]
    red = input_features(Image.new("RGB", (50, 50), (255, 0, 0)), fmt="JPEG", n_bytes=1, width=50, height=50)
    # no spread, so only 0.3 * |mean| counts: rg = 255, yb = 127.5
    assert red.colourfulness == pytest.approx(0.3 * math.hypot(255, 127.5)) and red.brightness == pytest.approx(
        76, abs=1
    )
    palette = input_features(Image.new("L", (10, 10), 30), fmt="GIF", n_bytes=1, width=10, height=10)
    assert palette.brightness == pytest.approx(30.0) and palette.colourfulness == pytest.approx(0.0)


def test_dark_tiny_images_drift_and_alert_once(capsys: pytest.CaptureFixture[str]) -> None:
    alerts = Alerts()
    monitor = DriftMonitor(window=300, reference_size=300, on_alert=alerts)
    assert all(v is None for v in monitor.scores().values())
    for f in sample("normal", 1):
        monitor.observe_input(f)
    baseline = monitor.scores()
    assert all(baseline[name] == pytest.approx(0.0, abs=1e-12) for name in INPUTS)  # the window is the reference
    assert baseline["confidence"] is None  # no outputs seen yet
    for f in sample("dark", 2):
        monitor.observe_input(f)
    scores = monitor.scores()
    with capsys.disabled():
        print("\ndark/tiny drift PSI:", {k: round(v, 3) for k, v in scores.items() if v is not None})
    for name in ("brightness", "width", "height", "bytes", "colourfulness"):
        assert score(scores, name) > 0.2, name
    for name in ("brightness", "width", "height"):
        assert alerts.names().count(name) == 1, alerts.calls
    assert all(value > 0.2 for _, value in alerts.calls)
    report = monitor.report()
    json.dumps(report)
    assert report["reference"] == {"source": "first N requests", "size": 300, "complete": False}  # no outputs yet
    assert report["window"] == {"size": 300} and report["psi_alert"] == 0.2
    assert report["features"]["brightness"]["alert"] is True
    assert report["features"]["confidence"] == {"psi": None, "alert": False, "reference_n": 0, "window_n": 0}
    assert alerts.names().count("brightness") == 1  # scores()/report() did not fire it again


def test_same_distribution_does_not_drift(capsys: pytest.CaptureFixture[str]) -> None:
    alerts = Alerts()
    monitor = DriftMonitor(window=300, reference_size=300, on_alert=alerts)
    for f in (*sample("normal", 1), *sample("normal", 3)):
        monitor.observe_input(f)
    scores = monitor.scores()
    with capsys.disabled():
        print("\nsame distribution PSI:", {k: round(v, 3) for k, v in scores.items() if v is not None})
    for name in INPUTS:
        assert score(scores, name) < 0.2, (name, scores[name])
    assert alerts.calls == []


def test_output_drift_confidence_length_and_vocabulary(capsys: pytest.CaptureFixture[str]) -> None:
    alerts = Alerts()
    monitor = DriftMonitor(window=300, reference_size=300, on_alert=alerts)
    for f in captions(1, 300, words=DOG_WORDS, confidence=0.8, length=(8, 12)):
        monitor.observe_output(f)
    for f in captions(2, 300, words=DOG_WORDS, confidence=0.35, length=(3, 5)):
        monitor.observe_output(f)
    low = monitor.scores()
    assert score(low, "confidence") > 0.2 and score(low, "caption_length") > 0.2
    assert score(low, "vocabulary") < 0.2  # same words, just fewer
    assert sorted(alerts.names()) == ["caption_length", "confidence"]

    vocab = DriftMonitor(window=300, reference_size=300, on_alert=alerts)
    for f in captions(1, 300, words=DOG_WORDS, confidence=0.8, length=(8, 12)):
        vocab.observe_output(f)
    for f in captions(3, 300, words=CAR_WORDS, confidence=0.8, length=(8, 12)):
        vocab.observe_output(f)
    switched = vocab.scores()
    with capsys.disabled():
        print("\noutput drift PSI (low confidence, short):", {k: round(v, 3) for k, v in low.items() if v is not None})
        print("output drift PSI (new vocabulary):", {k: round(v, 3) for k, v in switched.items() if v is not None})
    assert score(switched, "vocabulary") > 0.2
    assert score(switched, "confidence") < 0.2 and score(switched, "caption_length") < 0.2
    assert alerts.names()[-1] == "vocabulary"


def test_alert_rearms_after_falling_back() -> None:
    alerts = Alerts()
    monitor = DriftMonitor(window=100, reference_size=200, on_alert=alerts, check_every=10)
    normal, dark = sample("normal", 1), sample("dark", 2)
    for f in (*normal[:200], *dark[:100]):
        monitor.observe_input(f)
    assert alerts.names().count("brightness") == 1
    for f in normal[200:]:
        monitor.observe_input(f)
    assert monitor.report()["features"]["brightness"]["alert"] is False
    for f in dark[100:200]:
        monitor.observe_input(f)
    assert alerts.names().count("brightness") == 2


def test_reference_round_trip_gives_same_scores(tmp_path: Path) -> None:
    first = DriftMonitor(window=300, reference_size=300)
    window = sample("dark", 2)[:150] + sample("normal", 3)[:150]
    outputs = captions(1, 300, words=DOG_WORDS, confidence=0.8, length=(8, 12))
    later = captions(4, 300, words=DOG_WORDS[:5] + CAR_WORDS[:5], confidence=0.6, length=(6, 12))
    for i, f in enumerate((*sample("normal", 1), *window)):
        first.observe_input(f)
        first.observe_output((outputs + later)[i])
    path = tmp_path / "drift-reference.json"
    first.save_reference(path)
    reference = DriftMonitor.load_reference(path)
    assert reference == first.reference_snapshot()
    second = DriftMonitor(window=300, reference_size=300, reference=reference)
    for f, o in zip(window, later, strict=True):
        second.observe_input(f)
        second.observe_output(o)
    assert second.scores() == first.scores()
    assert all(v is not None for v in second.scores().values())
    assert second.report()["reference"] == {"source": "file", "size": 300, "complete": True}
    (tmp_path / "bad.json").write_text('{"version": 99}')
    with pytest.raises(ValueError):
        DriftMonitor.load_reference(tmp_path / "bad.json")


def test_window_memory_is_bounded() -> None:
    monitor = DriftMonitor(window=100, reference_size=50)
    base = sample("normal", 1)
    out = captions(1, 100, words=DOG_WORDS, confidence=0.8, length=(8, 12))
    for i in range(10_000):
        monitor.observe_input(base[i % len(base)])
        monitor.observe_output(out[i % len(out)])
    report = monitor.report()
    assert report["window"]["size"] == 100
    assert all(feature["window_n"] == 100 for feature in report["features"].values())
    for feature in monitor._features.values():
        assert len(feature.window) == 100
        assert feature.reference == []  # freed once fixed


def test_constant_reference_still_sees_values_above_and_below() -> None:
    size = OutputFeatures(confidence=0.5, caption_length=10, words=("dog",))
    for other in (3, 30):
        monitor = DriftMonitor(window=50, reference_size=50)
        for _ in range(50):
            monitor.observe_output(size)
        for _ in range(50):
            monitor.observe_output(OutputFeatures(0.5, other, ("dog",)))
        assert score(monitor.scores(), "caption_length") > 5
        assert monitor.scores()["confidence"] == 0.0


def test_concurrent_observers_keep_counts_consistent() -> None:
    monitor = DriftMonitor(window=200, reference_size=100, check_every=5)
    base = sample("normal", 1)

    def work(offset: int) -> None:
        for i in range(500):
            monitor.observe_input(base[(i + offset) % len(base)])

    threads = [threading.Thread(target=work, args=(k * 37,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for feature in monitor._features.values():
        if feature.expected is not None:
            assert sum(feature.counts) == len(feature.window) == 200


def test_bad_callback_does_not_break_observation() -> None:
    def boom(feature: str, value: float) -> None:
        raise RuntimeError("pager down")

    monitor = DriftMonitor(window=100, reference_size=100, on_alert=boom)
    for f in (*sample("normal", 1)[:100], *sample("dark", 2)[:100]):
        monitor.observe_input(f)
    assert monitor.report()["features"]["brightness"]["alert"] is True
