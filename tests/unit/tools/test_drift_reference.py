"""`captioner drift save-reference --images`: a drift reference from a folder of images, no model and no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.cli import main
from captioner.model.preprocessing import ImagePreprocessor, pixel_sample
from captioner.observability.drift_features import INPUT_NUMERIC
from captioner.observability.psi import DriftMonitor
from captioner.rollout.drift_watch import features_of
from captioner.tools.drift_reference import reference_from_images
from tests.support.images import dark_tiny, normal_photo

INPUTS = (*INPUT_NUMERIC, "format")


def test_save_reference_from_a_folder_of_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "normal"
    (folder / "nested").mkdir(parents=True)
    for seed in range(60):
        data, content_type = normal_photo(seed)
        (folder / ("nested" if seed % 2 else ".") / f"{seed}.{content_type.split('/')[1]}").write_bytes(data)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "ref.json"
    assert main(["drift", "save-reference", "--images", str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 files" in printed and "small reference" in printed
    reference = DriftMonitor.load_reference(out)
    assert set(reference["features"]) == set(INPUTS)  # no model ran: captions are learnt by the server
    assert reference["features"]["width"]["n"] == 60
    assert sorted(reference["features"]["format"]["categories"]) == ["JPEG", "PNG"]

    # The server using it: inputs compared with the file at once, outputs learnt from the first requests.
    monitor = DriftMonitor(window=40, reference_size=40, reference=reference, min_window=40)
    rng_dark = [dark_tiny(seed)[0] for seed in range(40)]
    decoder = ImagePreprocessor(height=384, width=384, image_mean=(0, 0, 0), image_std=(1, 1, 1))
    for data in rng_dark:
        image, info = decoder.decode(data)
        monitor.observe_input(features_of(pixel_sample(image), info, len(data)))
    scores = monitor.scores()
    assert (scores["brightness"] or 0) > 0.2 and scores["confidence"] is None


def test_reference_from_images_matches_observing_the_same_images(tmp_path: Path) -> None:
    from captioner.config import load_settings

    for seed in range(30):
        (tmp_path / f"{seed}.png").write_bytes(dark_tiny(seed)[0])
    reference = reference_from_images(tmp_path, load_settings(None, {}))
    assert reference["features"]["brightness"]["n"] == 30
    widths = reference["features"]["width"]
    assert widths["cuts"] == [24.0]  # every image is 24 px wide: one cut, everything in its bin
    assert widths["expected"][1] == 1.0
