"""``captioner train --teacher``: a tiny student distilled from another tiny model (a different seed), for a few
steps. The mechanics only (what the targets are, what the card says): captions of untrained models mean nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from captioner.cli import main
from captioner.tools.init_model import write_untrained_model
from captioner.tools.synth import write_dataset

IMAGES = 4
FEW_STEPS = ["--max-steps", "2", "--batch-size", "4", "--num-workers", "0", "--seed", "1"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_model(tmp_path_factory.mktemp("teacher") / "model", size="tiny", seed=1)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no config.yaml here
    monkeypatch.setenv("CAPTIONER_MODEL__DEVICE", "cpu")
    monkeypatch.setenv("CAPTIONER_MODEL__WORKER", "thread")  # the teacher in this process: no child to start
    write_dataset(tmp_path / "data", IMAGES, seed=4)
    return tmp_path


def distil(student: Path, teacher: Path, data: Path, out: Path, *extra: str) -> int:
    files = ["--images", str(data), "--teacher", str(teacher)]
    return main(["train", "--base", str(student), *files, "--out", str(out), *FEW_STEPS, *extra])


def test_images_alone_train_on_the_teachers_captions(workdir: Path, tiny_model_dir: Path, teacher: Path) -> None:
    out = workdir / "student"
    assert distil(tiny_model_dir, teacher, workdir / "data", out) == 0

    labels_file = out / "teacher-captions.json"
    labels = json.loads(labels_file.read_text())
    assert labels["info"]["model"] == str(teacher)
    # The targets are exactly what `captioner data label` gets from the teacher for the same folder.
    assert main(["data", "label", "--model", str(teacher), "--images", str(workdir / "data"), "--out", "t.json"]) == 0
    reference = json.loads((workdir / "t.json").read_text())
    assert [a["caption"] for a in labels["annotations"]] == [a["caption"] for a in reference["annotations"]]
    assert len(labels["images"]) == IMAGES

    card = json.loads((out / "training.json").read_text())
    assert card["distilled_from"] == card["distilled_from"] | {"path": str(teacher), "captions_per_image": 1}
    assert (
        card["distilled_from"]["weights_sha256"]
        == hashlib.sha256((teacher / "model.safetensors").read_bytes()).hexdigest()
    )
    train = card["data"]["train"]
    assert train["targets"] == "teacher" and train["human"] is None
    assert train["teacher_labels"]["annotations_sha256"] == hashlib.sha256(labels_file.read_bytes()).hexdigest()
    assert (train["num_images"], train["num_captions"]) == (IMAGES, IMAGES)
    assert card["steps"] == 2 and card["parent"]["path"] == str(tiny_model_dir)
    assert (out / "model.safetensors").read_bytes() != (tiny_model_dir / "model.safetensors").read_bytes()


def test_annotations_with_a_teacher_train_on_both(workdir: Path, tiny_model_dir: Path, teacher: Path) -> None:
    data = workdir / "data"
    out = workdir / "student"
    human = json.loads((data / "captions.json").read_text())
    extra = ["--annotations", str(data / "captions.json"), "--teacher-captions", "2"]
    assert distil(tiny_model_dir, teacher, data, out, *extra) == 0
    train = json.loads((out / "training.json").read_text())["data"]["train"]
    assert train["targets"] == "teacher+human"
    assert train["human"]["annotations_sha256"] == hashlib.sha256((data / "captions.json").read_bytes()).hexdigest()
    teacher_captions = train["teacher_labels"]["num_captions"]
    assert teacher_captions == 2 * IMAGES
    # Every image trains on all of both: its human references and the (random) teacher's captions.
    assert train["num_captions"] == len(human["annotations"]) + teacher_captions
    assert train["num_images"] == IMAGES


def test_usage_errors_exit_2_with_one_line(
    workdir: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = workdir / "student"
    base = ["train", "--base", str(tiny_model_dir), "--images", str(workdir / "data"), "--out", str(out)]
    assert main(base) == 2
    assert "give the captions to train on: --annotations FILE" in capsys.readouterr().err
    (workdir / "empty").mkdir()
    assert main([*base, "--teacher", str(workdir / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"train: --teacher {workdir / 'empty'}: no model there (config.json and weights)"
    assert main([*base, "--teacher", str(tiny_model_dir), "--teacher-captions", "0"]) == 2
    assert not out.exists()
