"""Karpathy split files: one split read as COCO's reader would give it; bad files and flags refused with exit 2."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from captioner.cli import main
from captioner.tools.eval.annotations import AnnotationsError, EvalImage
from captioner.tools.eval.karpathy import load_karpathy
from captioner.tools.eval.references import References


def sentences(*texts: str) -> list[dict[str, Any]]:
    return [{"raw": text, "tokens": text.lower().rstrip(".").split(), "imgid": 0} for text in texts]


# As dataset_coco.json: a folder per image (filepath), COCO's own id (cocoid) beside Karpathy's (imgid).
COCO = {
    "dataset": "coco",
    "images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "test", "imgid": 0, "cocoid": 391895,
         "sentences": sentences("A man on a moped.", "A red helmet.")},
        {"filepath": "val2014", "filename": "b.jpg", "split": "val", "imgid": 1, "cocoid": 522418,
         "sentences": sentences("A woman cutting a cake.")},
        {"filepath": "train2014", "filename": "c.jpg", "split": "train", "imgid": 2, "cocoid": 318556,
         "sentences": sentences("A kitchen.")},
        {"filepath": "val2014", "filename": "d.jpg", "split": "restval", "imgid": 3, "cocoid": 116100,
         "sentences": sentences("A dog on a bed.", "A sleeping dog.")},
        {"filepath": "val2014", "filename": "e.jpg", "split": "test", "imgid": 4, "cocoid": 379340,
         "sentences": []},
    ],
}  # fmt: skip
# As dataset_flickr30k.json: no filepath, no cocoid.
FLICKR = {
    "dataset": "flickr30k",
    "images": [
        {"filename": "1000092795.jpg", "split": "train", "imgid": 0, "sentences": sentences("Two young guys.")},
        {"filename": "10002456.jpg", "split": "test", "imgid": 1,
         "sentences": [{"tokens": ["several", "men", "in", "hard", "hats"]}]},
    ],
}  # fmt: skip


def write(tmp_path: Path, document: Any, name: str = "dataset.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def test_each_split_of_a_coco_file(tmp_path: Path) -> None:
    path = write(tmp_path, COCO)
    test, notes = load_karpathy(path, "test")
    assert test == [EvalImage(391895, "val2014/a.jpg", ("A man on a moped.", "A red helmet."))]
    assert notes == ["1 images of split 'test' have no sentence; left out"]
    val, notes = load_karpathy(path, "val")
    assert val == [EvalImage(522418, "val2014/b.jpg", ("A woman cutting a cake.",))] and notes == []
    # restval is train, as in the papers that use these splits.
    train, notes = load_karpathy(path, "train")
    assert [(i.image_id, i.file_name) for i in train] == [(318556, "train2014/c.jpg"), (116100, "val2014/d.jpg")]
    assert notes == ["1 'restval' images counted as train"]


def test_a_flickr_file_without_filepath_or_cocoid(tmp_path: Path) -> None:
    path = write(tmp_path, FLICKR)
    assert load_karpathy(path, "train") == ([EvalImage(0, "1000092795.jpg", ("Two young guys.",))], [])
    # A sentence without raw text: its tokens, joined.
    assert load_karpathy(path, "test")[0] == [EvalImage(1, "10002456.jpg", ("several men in hard hats",))]
    assert load_karpathy(path, "val") == ([], [])


def test_references_read_either_format(tmp_path: Path) -> None:
    karpathy = References(write(tmp_path, COCO), "val")
    assert str(karpathy) == f"--karpathy {tmp_path / 'dataset.json'} --split val"
    assert karpathy.load()[0][0].image_id == 522418
    coco = {"images": [{"id": 7, "file_name": "x.png"}], "annotations": [{"image_id": 7, "caption": "a cat"}]}
    plain = References(write(tmp_path, coco, "coco.json"))
    assert str(plain) == f"--annotations {tmp_path / 'coco.json'}"
    assert plain.load() == ([EvalImage(7, "x.png", ("a cat",))], [])


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"images": {}}, "an 'images' list"),
        ({"images": [{"filename": "a.jpg", "split": "dev", "sentences": []}]}, "images[0]: 'split' must be one of"),
        ({"images": [{"split": "test", "sentences": []}]}, "images[0]: needs a 'filename'"),
        ({"images": [{"filename": "a.jpg", "split": "test", "sentences": "A cat."}]}, "'sentences' must be a list"),
        ({"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"text": "x"}]}]}, "needs 'raw'"),
        (
            {"images": [{"filename": n, "split": "test", "imgid": 1, "sentences": []} for n in ("a.jpg", "b.jpg")]},
            "images[1]: image id 1 appears twice",
        ),
    ],
)
def test_a_bad_file_is_refused_with_where_it_is_wrong(tmp_path: Path, document: Any, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(AnnotationsError, match=re.escape(message)) as refused:
        load_karpathy(path, "test")
    assert str(path) in str(refused.value)


def test_a_missing_file_or_an_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(AnnotationsError, match="cannot read it"):
        load_karpathy(tmp_path / "missing.json", "test")
    with pytest.raises(AnnotationsError, match="--split must be one of train, val, test"):
        load_karpathy(write(tmp_path, COCO), "restval")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPTIONER_MODEL__PATH", str(tmp_path / "no-model-here"))  # never loaded: refused first
    monkeypatch.setenv("CAPTIONER_MODEL__DEVICE", "cpu")
    monkeypatch.setenv("CAPTIONER_MODEL__WORKER", "thread")
    write(tmp_path, COCO)
    write(tmp_path, FLICKR, "flickr.json")  # nothing in val
    (tmp_path / "coco.json").write_text('{"images": [], "annotations": []}')
    return tmp_path


@pytest.mark.parametrize("command", ["eval", "train"])
def test_usage_errors_exit_2_before_anything_loads(
    workdir: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(workdir / "out")]
    # --annotations and --karpathy exclude each other, and one of them is needed: argparse's usage error (train
    # checks the second itself, since --teacher makes both optional).
    for sources in (["--annotations", "coco.json", "--karpathy", "dataset.json", "--split", "test"], []):
        if command == "train" and not sources:
            assert main([command, "--images", ".", *out]) == 2
        else:
            with pytest.raises(SystemExit) as refused:
                main([command, *sources, "--images", ".", *out])
            assert refused.value.code == 2
        assert "--annotations" in capsys.readouterr().err
    refusals = [
        (["--karpathy", "dataset.json"], "say which split to read with --split train|val|test"),
        (["--annotations", "coco.json", "--split", "test"], "--split goes with --karpathy"),
    ]
    if command == "eval":  # train reads the file after loading its base model: test_karpathy (integration)
        refusals.append((["--karpathy", "missing.json", "--split", "test"], "--karpathy missing.json: cannot read it"))
        # A split without a captioned image: refused as an empty COCO file is, before the model loads.
        refusals.append((["--karpathy", "flickr.json", "--split", "val"], "--split val: no image has a reference"))
    for sources, message in refusals:
        assert main([command, *sources, "--images", ".", *out]) == 2
        assert message in capsys.readouterr().err
    assert not (workdir / "out").exists()
