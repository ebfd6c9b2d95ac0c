"""``captioner data synth``: deterministic, COCO captions format, and captions that follow the pixels.

The content checks read the truth back from the pixels alone (no use of the drawing code): the object's colour
is the palette colour nearest the pixels that differ from the background, and a lone object's shape follows
from how much of its bounding box it fills (circle pi/4, square 1, triangle 1/2).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.cli import main
from captioner.tools.eval.command import load_annotations
from captioner.tools.synth import BACKGROUNDS, COLORS, REFERENCES_PER_IMAGE, SHAPES, write_dataset


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, 60, seed=5)
    return out


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_the_same_seed_gives_the_same_bytes_and_another_seed_another_set(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", 12, seed=7)
    write_dataset(tmp_path / "b", 12, seed=7)
    write_dataset(tmp_path / "c", 12, seed=8)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert files(tmp_path / "a")["000000.png"] != files(tmp_path / "c")["000000.png"]
    # Image i depends on the seed and i only: a larger set begins with the smaller one.
    write_dataset(tmp_path / "d", 5, seed=7)
    first = {name: data for name, data in files(tmp_path / "a").items() if name < "000005.png"}
    assert {name: data for name, data in files(tmp_path / "d").items() if name != "captions.json"} == first


def test_captions_json_is_coco_captions_format_that_eval_reads(synth_set: Path) -> None:
    document = json.loads((synth_set / "captions.json").read_text())
    assert len(document["images"]) == 60
    assert len({image["id"] for image in document["images"]}) == 60
    assert len({a["id"] for a in document["annotations"]}) == len(document["annotations"]) == 60 * 5
    for image in document["images"]:
        with Image.open(synth_set / image["file_name"]) as opened:
            assert opened.size == (image["width"], image["height"]) == (128, 128)
    images, notes = load_annotations(synth_set / "captions.json")  # `captioner eval`'s own reader
    assert notes == []
    assert len(images) == 60
    for image in images:
        assert len(set(image.references)) == len(image.references) == REFERENCES_PER_IMAGE


def observed_color(pixels: np.ndarray, background: str) -> tuple[str, np.ndarray]:
    """The palette colour of the pixels far from the background, and the mask of those pixels."""
    distance = np.abs(pixels.astype(int) - np.array(BACKGROUNDS[background])).sum(axis=-1)
    mask = distance > distance.max() / 2  # the object's own pixels, and half of its anti-aliased edge
    mean = pixels[mask].mean(axis=0)
    nearest = min(COLORS, key=lambda name: float(np.abs(mean - np.array(COLORS[name])).sum()))
    return nearest, mask


def observed_shape(mask: np.ndarray) -> str:
    rows, cols = np.nonzero(mask)
    fill = mask.sum() / ((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
    return "triangle" if fill < 0.64 else "circle" if fill < 0.9 else "square"


def test_the_captions_name_what_the_pixels_show(synth_set: Path) -> None:
    document = json.loads((synth_set / "captions.json").read_text())
    references: dict[int, list[str]] = {}
    for annotation in document["annotations"]:
        references.setdefault(annotation["image_id"], []).append(annotation["caption"])
    shapes_checked = 0
    for image in document["images"]:
        scene = image["scene"]
        pixels = np.asarray(Image.open(synth_set / image["file_name"]).convert("RGB"))
        color, mask = observed_color(pixels, scene["background"])
        assert color == scene["color"], image["file_name"]
        if scene["count"] == 1:
            assert observed_shape(mask) == scene["shape"], image["file_name"]
            shapes_checked += 1
        for caption in references[image["id"]]:
            words = caption.split()
            # Its own colour and shape, and no other: a caption is wrong for an image of another kind.
            assert [w for w in words if w in COLORS] == [scene["color"]], caption
            assert [w for w in words if w.rstrip("s") in SHAPES] == [
                scene["shape"] + ("" if scene["count"] == 1 else "s")
            ], caption
    assert shapes_checked >= 15
    # No caption fits every image, and the set covers many colour-shape kinds.
    all_captions = [set(refs) for refs in references.values()]
    assert not set.intersection(*all_captions)
    kinds = {(image["scene"]["color"], image["scene"]["shape"]) for image in document["images"]}
    assert len(kinds) >= 10


def test_the_command_writes_a_set_that_eval_can_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "--out", str(tmp_path / "set"), "--images", "3", "--seed", "1"]) == 0
    assert "wrote 3 images and 15 captions" in capsys.readouterr().out
    images, _ = load_annotations(tmp_path / "set" / "captions.json")
    assert [(tmp_path / "set" / i.file_name).is_file() for i in images] == [True] * 3
    assert main(["data", "synth", "--out", str(tmp_path / "none"), "--images", "0"]) == 2
