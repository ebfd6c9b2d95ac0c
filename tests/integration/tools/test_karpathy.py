"""``captioner eval`` and ``captioner train`` on a Karpathy split file: the tiny model, synthetic images.

A synthetic set becomes a small Karpathy-format file (``filepath`` = the set's folder under the root), split
into test, train and restval images. Its test split scores exactly as the same images do from a COCO file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from captioner.cli import main
from captioner.tools.synth import write_dataset

# Image index -> its split in the Karpathy file.
SPLITS = ["test", "test", "test", "train", "train", "restval"]


@pytest.fixture
def root(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ROOT/scenes/ holds the images; ROOT/dataset.json is their Karpathy file, ROOT/test.json COCO's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPTIONER_MODEL__PATH", str(tiny_model_dir))
    monkeypatch.setenv("CAPTIONER_MODEL__DEVICE", "cpu")
    monkeypatch.setenv("CAPTIONER_MODEL__WORKER", "thread")
    coco = json.loads(write_dataset(tmp_path / "scenes", len(SPLITS), seed=2).read_text())
    sentences: dict[int, list[dict[str, Any]]] = {}
    for annotation in coco["annotations"]:
        sentences.setdefault(annotation["image_id"], []).append({"raw": annotation["caption"]})
    images = [
        {"filepath": "scenes", "filename": image["file_name"], "split": split, "imgid": index,
         "cocoid": 1000 + image["id"], "sentences": sentences[image["id"]]}
        for index, (image, split) in enumerate(zip(coco["images"], SPLITS, strict=True))
    ]  # fmt: skip
    (tmp_path / "dataset.json").write_text(json.dumps({"dataset": "coco", "images": images}))
    test = [i for i, split in zip(coco["images"], SPLITS, strict=True) if split == "test"]
    kept = {1000 + i["id"] for i in test}
    (tmp_path / "test.json").write_text(
        json.dumps(
            {
                "images": [i | {"id": 1000 + i["id"], "file_name": f"scenes/{i['file_name']}"} for i in test],
                "annotations": [a | {"image_id": 1000 + a["image_id"]} for a in coco["annotations"]
                                if 1000 + a["image_id"] in kept],
            }
        )
    )  # fmt: skip
    return tmp_path


def test_eval_scores_the_test_split_as_the_same_coco_set(root: Path) -> None:
    command = ["eval", "--karpathy", "dataset.json", "--split", "test", "--images", str(root), "--batch-size", "4"]
    assert main([*command, "--out", "karpathy.json"]) == 0
    report = json.loads((root / "karpathy.json").read_text())
    assert (report["num_images"], report["num_failed"], report["split"]) == (3, 0, "test")
    assert [image["image_id"] for image in report["images"]] == [1000, 1001, 1002]  # cocoid
    assert [image["file_name"] for image in report["images"]] == [f"scenes/{i:06d}.png" for i in range(3)]
    assert all(len(image["references"]) == 5 and image["caption"] for image in report["images"])
    assert set(report["metrics"]) >= {"Bleu_4", "ROUGE_L", "CIDEr"}

    coco = ["eval", "--annotations", "test.json", "--images", str(root), "--batch-size", "4", "--out", "coco.json"]
    assert main(coco) == 0
    same = json.loads((root / "coco.json").read_text())
    assert same["split"] is None
    assert same["metrics"] == report["metrics"]
    assert same["images"] == report["images"]


def test_train_reads_the_train_split_with_restval(root: Path, tiny_model_dir: Path) -> None:
    out = root / "trained"
    command = ["train", "--base", str(tiny_model_dir), "--karpathy", "dataset.json", "--split", "train"]
    schedule = ["--max-steps", "1", "--batch-size", "4", "--num-workers", "0", "--lr", "1e-3"]
    assert main([*command, "--images", str(root), "--out", str(out), *schedule]) == 0
    card = json.loads((out / "training.json").read_text())
    train = card["data"]["train"]
    assert (train["annotations"], train["split"]) == ("dataset.json", "train")
    assert (train["num_images"], train["num_captions"]) == (3, 15)  # two train images and one restval
