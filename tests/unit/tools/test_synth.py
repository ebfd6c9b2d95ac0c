"""``captioner data synth``: deterministic, COCO captions format, and captions that follow the pixels.

The content checks read the truth back from the pixels alone (no use of the drawing code): the object's colour
is the palette colour nearest the pixels that differ from the background, and a lone object's shape follows
from how much of its bounding box it fills (circle pi/4, square 1, triangle 1/2). Hard scenes are checked against
their easy twins (same seed and index): fainter and smaller objects, busier ground, the same colours, read from
how chromatic the pixels are (everything but the objects is a neutral grey).
"""

from __future__ import annotations

import hashlib
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


# What `write_dataset(out, 6, seed=3)` drew before difficulties existed: the decoded pixels of its six images
# (so that a PNG encoder upgrade doesn't count) and its captions.json, byte for byte.
EASY_PIXELS_SHA256 = "62d0b6ad0ef190a8315a9b3b9b68cd0854aa9c1ece0c5cfde9577294982a01b7"
EASY_CAPTIONS_SHA256 = "a34efa979431ba3c5aab27ee11a5aa86efda65f3b273d5c73d71feff570cfaab"


def pixels_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as opened:
            digest.update(opened.convert("RGB").tobytes())
    return digest.hexdigest()


def test_the_default_easy_set_is_the_one_drawn_before_difficulties(tmp_path: Path) -> None:
    write_dataset(tmp_path / "default", 6, seed=3)
    write_dataset(tmp_path / "easy", 6, seed=3, difficulty="easy")
    for folder in (tmp_path / "default", tmp_path / "easy"):
        assert pixels_sha256(folder) == EASY_PIXELS_SHA256
        assert hashlib.sha256((folder / "captions.json").read_bytes()).hexdigest() == EASY_CAPTIONS_SHA256
    assert files(tmp_path / "default") == files(tmp_path / "easy")


@pytest.mark.parametrize("difficulty", ["hard", "mixed"])
def test_each_difficulty_gives_the_same_bytes_for_the_same_seed(tmp_path: Path, difficulty: str) -> None:
    write_dataset(tmp_path / "a", 8, seed=7, difficulty=difficulty)
    write_dataset(tmp_path / "b", 8, seed=7, difficulty=difficulty)
    write_dataset(tmp_path / "c", 8, seed=8, difficulty=difficulty)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert files(tmp_path / "a")["000000.png"] != files(tmp_path / "c")["000000.png"]


def test_hard_and_mixed_sets_show_the_easy_scenes_and_record_each_difficulty(tmp_path: Path) -> None:
    sets = {d: tmp_path / d for d in ("easy", "hard", "mixed")}
    for difficulty, folder in sets.items():
        write_dataset(folder, 16, seed=4, difficulty=difficulty)
    documents = {d: json.loads((folder / "captions.json").read_text()) for d, folder in sets.items()}
    # The same scenes and the same references at every index, whatever the difficulty.
    for difficulty in ("hard", "mixed"):
        assert [i["scene"] for i in documents[difficulty]["images"]] == [
            i["scene"] for i in documents["easy"]["images"]
        ]
        assert documents[difficulty]["annotations"] == documents["easy"]["annotations"]
        assert documents[difficulty]["info"]["difficulty"] == difficulty
    assert all("difficulty" not in image for image in documents["easy"]["images"])  # an easy set: as before
    assert {image["difficulty"] for image in documents["hard"]["images"]} == {"hard"}
    kinds = [image["difficulty"] for image in documents["mixed"]["images"]]
    assert 3 <= kinds.count("hard") <= 13, kinds  # a fair coin per image: both kinds, neither rare
    # A mixed set's image is the easy or the hard set's image at that index, as its entry says.
    for image, kind in zip(documents["mixed"]["images"], kinds, strict=True):
        name = image["file_name"]
        assert (sets["mixed"] / name).read_bytes() == (sets[kind] / name).read_bytes()
        assert (sets["mixed"] / name).read_bytes() != (sets["hard" if kind == "easy" else "easy"] / name).read_bytes()
    # The hard images load with eval's reader like any other set.
    images, notes = load_annotations(sets["hard"] / "captions.json")
    assert notes == [] and len(images) == 16
    with pytest.raises(ValueError, match="difficulty"):
        write_dataset(tmp_path / "x", 1, difficulty="brutal")


def chroma(pixels: np.ndarray) -> np.ndarray:
    """Max minus min channel: zero on neutral greys. Backgrounds, gradients and clutter are all neutral (and
    noise is small), so the strongly chromatic pixels are the objects'."""
    as_int = pixels.astype(int)
    return as_int.max(axis=-1) - as_int.min(axis=-1)


def border(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).astype(float)


def spread(pixels: np.ndarray) -> float:
    """The median distance from the median colour: how much the ground varies, whatever an object adds."""
    return float(np.median(np.abs(pixels - np.median(pixels, axis=0)).sum(axis=-1)))


def seen_color(offset: np.ndarray, background: str) -> str:
    """The palette colour whose direction from ``background`` is nearest the direction of ``offset``."""

    def cosine(name: str) -> float:
        direction = np.array(COLORS[name]) - np.array(BACKGROUNDS[background])
        return float(offset @ direction / np.linalg.norm(offset) / np.linalg.norm(direction))

    return max(COLORS, key=cosine)


def test_hard_images_have_fainter_smaller_objects_on_busy_ground_and_the_same_colours(
    synth_set: Path, tmp_path: Path
) -> None:
    hard_set = tmp_path / "hard"
    write_dataset(hard_set, 60, seed=5, difficulty="hard")  # the same seed and size as synth_set: twins
    document = json.loads((hard_set / "captions.json").read_text())
    contrast_ratios, area_ratios, ground = [], [], []
    for image in document["images"]:
        easy = np.asarray(Image.open(synth_set / image["file_name"]).convert("RGB"))
        hard = np.asarray(Image.open(hard_set / image["file_name"]).convert("RGB"))
        easy_chroma, hard_chroma = chroma(easy), chroma(hard)
        contrast_ratios.append(np.percentile(hard_chroma, 99) / np.percentile(easy_chroma, 99))
        area_ratios.append((hard_chroma > hard_chroma.max() / 2).sum() / (easy_chroma > easy_chroma.max() / 2).sum())
        ground.append((spread(border(easy)), spread(border(hard))))
        # The references stay true: the object's colour, seen as its direction from the background, is the
        # scene's (a colour pulled toward the background keeps that direction).
        mask = hard_chroma > hard_chroma.max() / 2
        offset = hard[mask].astype(float).mean(axis=0) - np.median(border(hard), axis=0)
        assert seen_color(offset, image["scene"]["background"]) == image["scene"]["color"], image["file_name"]
    # Lower contrast and smaller objects in (nearly) every image, by a clear margin on average.
    assert sum(r < 1 for r in contrast_ratios) >= 57 and np.mean(contrast_ratios) < 0.8, contrast_ratios
    assert sum(r < 1 for r in area_ratios) >= 57 and np.mean(area_ratios) < 0.7, area_ratios
    # The easy ground is flat (jitter only); the hard one varies (gradient, noise, clutter).
    assert all(easy_spread < 1 and hard_spread > 8 for easy_spread, hard_spread in ground), ground


def test_the_command_takes_a_difficulty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mixed"
    assert main(["data", "synth", "--out", str(out), "--images", "4", "--difficulty", "mixed"]) == 0
    document = json.loads((out / "captions.json").read_text())
    assert {image["difficulty"] for image in document["images"]} <= {"easy", "hard"}
    with pytest.raises(SystemExit) as refused:
        main(["data", "synth", "--out", str(out), "--images", "1", "--difficulty", "brutal"])
    assert refused.value.code == 2
    assert "--difficulty" in capsys.readouterr().err
