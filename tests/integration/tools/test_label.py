"""``captioner data label``: the tiny model's captions for an unlabeled folder, as COCO captions that the
readers of ``captioner eval`` and ``captioner train`` take as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from torch.utils.data import DataLoader

from captioner.cli import main
from captioner.model.preprocessing import ImagePreprocessor
from captioner.tools.eval.command import load_annotations
from captioner.tools.synth import write_dataset
from captioner.tools.train.data import CaptionCollator, CaptionDataset, CaptionSet

IMAGES = 6


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory (no config.yaml); model.path points nowhere: --model must be what is used."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPTIONER_MODEL__PATH", str(tmp_path / "no-model-here"))
    monkeypatch.setenv("CAPTIONER_MODEL__DEVICE", "cpu")
    monkeypatch.setenv("CAPTIONER_MODEL__WORKER", "thread")  # in process, started in a second
    return tmp_path


@pytest.fixture
def unlabeled(workdir: Path) -> Path:
    """Six synthetic images in a nested folder, without their captions.json: nothing but pixels."""
    folder = workdir / "unlabeled"
    write_dataset(folder / "scenes", IMAGES, seed=3)
    (folder / "scenes" / "captions.json").unlink()
    return folder


def label(model: Path, images: Path, out: Path, *extra: str) -> int:
    return main(["data", "label", "--model", str(model), "--images", str(images), "--out", str(out), *extra])


def test_labels_load_with_the_eval_and_train_readers(
    tiny_model_dir: Path,
    unlabeled: Path,
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = workdir / "labels" / "captions.json"
    assert label(tiny_model_dir, unlabeled, out, "--batch-size", "4") == 0
    assert f"wrote {IMAGES} captions of {IMAGES} images" in capsys.readouterr().out
    document = json.loads(out.read_text())
    assert [image["file_name"] for image in document["images"]] == [f"scenes/{i:06d}.png" for i in range(IMAGES)]
    assert all((image["width"], image["height"]) == (128, 128) for image in document["images"])
    assert len({image["id"] for image in document["images"]}) == IMAGES
    assert len({a["id"] for a in document["annotations"]}) == len(document["annotations"]) == IMAGES
    assert document["info"]["model"] == str(tiny_model_dir)

    images, notes = load_annotations(out)  # `captioner eval`'s reader
    assert notes == [] and len(images) == IMAGES
    assert all(len(image.references) == 1 and image.references[0] for image in images)

    captions = CaptionSet.load(out, unlabeled)  # `captioner train`'s reader, then its loader
    assert len(captions.pairs()) == captions.num_captions == IMAGES
    from transformers import BlipProcessor

    processor: Any = BlipProcessor.from_pretrained(tiny_model_dir)
    preprocessor = ImagePreprocessor.from_pretrained(tiny_model_dir, max_pixels=40_000_000)
    collator = CaptionCollator(processor.tokenizer, "a picture of ", processor.tokenizer.bos_token_id)
    batches = list(DataLoader(CaptionDataset(captions.pairs(), preprocessor), batch_size=4, collate_fn=collator))
    assert [len(batch["labels"]) for batch in batches] == [4, 2]
    assert batches[0]["pixel_values"].shape == (4, 3, 64, 64)
    assert all(bool((batch["labels"] != -100).any(dim=1).all()) for batch in batches)  # every caption has words

    # The captions are the model's own: `captioner caption` gives the same top caption for each file.
    top = {image.file_name: image.references[0] for image in images}
    monkeypatch.setenv("CAPTIONER_MODEL__PATH", str(tiny_model_dir))
    assert main(["caption", str(unlabeled), "--out", str(workdir / "caption.jsonl"), "--batch-size", "4"]) == 0
    for line in (workdir / "caption.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert top[Path(record["path"]).relative_to(unlabeled).as_posix()] == record["captions"][0]["text"]


def test_top_k_captions_per_image_and_failures_left_out(
    tiny_model_dir: Path, unlabeled: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (unlabeled / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not the rest of a PNG")
    out = workdir / "labels.json"
    assert label(tiny_model_dir, unlabeled, out, "--num-captions", "2") == 1  # one file failed
    assert "broken.png" in capsys.readouterr().err
    document = json.loads(out.read_text())
    assert len(document["images"]) == IMAGES  # the broken file is left out, the others are all there
    assert len(document["annotations"]) == 2 * IMAGES
    by_image: dict[int, list[dict[str, Any]]] = {}
    for annotation in document["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    for ranked in by_image.values():
        assert [a["rank"] for a in ranked] == [1, 2]
        assert len({a["caption"] for a in ranked}) == 2  # two distinct captions: the model's top two
        assert ranked[0]["confidence"] >= ranked[1]["confidence"]
    images, notes = load_annotations(out)
    assert notes == [] and all(len(image.references) == 2 for image in images)


def test_usage_errors(tiny_model_dir: Path, unlabeled: Path, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "empty-model").mkdir()
    assert label(workdir / "empty-model", unlabeled, workdir / "out.json") == 2
    assert "no model there" in capsys.readouterr().err
    (workdir / "no-images").mkdir()
    assert label(tiny_model_dir, workdir / "no-images", workdir / "out.json") == 2
    assert "no image files" in capsys.readouterr().err
    assert label(tiny_model_dir, unlabeled, workdir) == 2  # --out is a folder
    assert "name the JSON file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        label(tiny_model_dir, unlabeled, workdir / "out.json", "--num-captions", "0")
    assert refused.value.code == 2
    assert not (workdir / "out.json").exists()
