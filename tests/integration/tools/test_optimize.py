"""``captioner optimize`` on the real tiny model: the INT8 and pruned folders load through the loader that
``serve`` and ``eval`` use, caption, and register as ordinary versions whose card says what was done.

Mechanics only: the tiny model is untrained, so nothing here measures speed or caption quality.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from captioner.cli import main
from captioner.model.loader import load_captioner
from captioner.model.protocol import CaptionJob
from captioner.registry.store import Registry
from captioner.tools.synth import write_dataset
from tests.support.model import tiny_blip, tiny_settings


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no config.yaml here
    monkeypatch.setenv("CAPTIONER_MODEL__DEVICE", "cpu")
    monkeypatch.setenv("CAPTIONER_MODEL__WORKER", "thread")
    return tmp_path


def card_of(folder: Path) -> dict[str, Any]:
    card: dict[str, Any] = json.loads((folder / "training.json").read_text())
    return card


def captions_from_the_loader(model_dir: Path) -> tuple[str, list[str]]:
    """The dtype the loader reports and the captions of a blank image, through ``load_captioner``."""
    captioner: Any = load_captioner(tiny_settings(model_dir))
    height, width = captioner.image_size
    captions = captioner.caption_batch([CaptionJob(torch.zeros(3, height, width))])[0]
    return captioner.dtype, [caption.text for caption in captions]


def parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def test_int8_folder_is_quantised_by_the_loader_and_registers(workdir: Path, tiny_model_dir: Path) -> None:
    out = workdir / "int8"
    assert main(["optimize", "--model", str(tiny_model_dir), "--out", str(out), "--int8"]) == 0
    assert json.loads((out / "quantization.json").read_text())["dtype"] == "qint8"
    dtype, captions = captions_from_the_loader(out)
    assert dtype == "int8" and captions and captions[0]
    assert captions_from_the_loader(tiny_model_dir)[0] == "float32"  # the source folder is untouched

    optimization = card_of(out)["optimization"]
    assert optimization["method"] == "int8-dynamic" and optimization["quantized_layers"] > 0
    assert optimization["parameters"]["before"] == optimization["parameters"]["after"]

    registry = Registry(workdir / "registry")
    registry.register(tiny_model_dir, "captioner", command="test")
    candidate = registry.register(out, "captioner", command="test")
    assert candidate.meta["parent"] == "models:/captioner/1"  # the registry's lineage, from the card
    assert (candidate.model_dir / "quantization.json").is_file()  # registered as INT8, served as INT8


def test_an_int8_folder_where_int8_cannot_run_is_served_as_it_is_with_a_warning(
    workdir: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = workdir / "int8"
    assert main(["optimize", "--model", str(tiny_model_dir), "--out", str(out), "--int8"]) == 0
    with caplog.at_level(logging.WARNING, logger="captioner.model"):
        captioner = tiny_blip(out, dtype="bfloat16")  # dynamic INT8 needs float32: as a GPU would load it
    assert captioner.dtype == "bfloat16"
    assert "asks for INT8" in caplog.text


def test_prune_half_gives_a_smaller_plain_blip(workdir: Path, tiny_model_dir: Path) -> None:
    from transformers import BlipForConditionalGeneration

    out = workdir / "pruned"
    assert main(["optimize", "--model", str(tiny_model_dir), "--out", str(out), "--prune", "0.5"]) == 0
    source: Any = BlipForConditionalGeneration.from_pretrained(tiny_model_dir)
    pruned, loading = BlipForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(loading.values())  # no missing, unexpected or mismatched weights: an ordinary BLIP folder
    for tower in ("vision_config", "text_config"):
        assert getattr(pruned.config, tower).intermediate_size == getattr(source.config, tower).intermediate_size // 2
    assert parameters(pruned) < parameters(source)
    assert pruned.vision_model.encoder.layers[0].mlp.fc1.out_features == pruned.config.vision_config.intermediate_size

    dtype, captions = captions_from_the_loader(out)
    assert dtype == "float32" and captions and captions[0]

    optimization = card_of(out)["optimization"]
    assert optimization["method"] == "structured-pruning" and optimization["fraction"] == 0.5
    assert optimization["parameters"] == {"before": parameters(source), "after": parameters(pruned)}
    assert optimization["towers"]["text"]["intermediate_size"] == {"before": 128, "after": 64}
    assert optimization["fine_tune"] is None
    assert card_of(out)["parent"]["path"] == str(tiny_model_dir)


def test_prune_then_fine_tune_distils_from_the_source(workdir: Path, tiny_model_dir: Path) -> None:
    write_dataset(workdir / "images", 4, seed=5)
    out = workdir / "pruned"
    tune = ["--images", str(workdir / "images"), "--max-steps", "2", "--batch-size", "4", "--num-workers", "0"]
    assert main(["optimize", "--model", str(tiny_model_dir), "--out", str(out), "--prune", "0.25", *tune]) == 0
    card = card_of(out)
    assert card["parent"]["path"] == str(tiny_model_dir)  # not the temporary pruned folder
    assert card["distilled_from"]["path"] == str(tiny_model_dir)  # the original is the teacher
    assert card["optimization"]["fine_tune"]["steps"] == card["steps"] == 2
    assert card["data"]["train"]["targets"] == "teacher"
    assert json.loads((out / "config.json").read_text())["text_config"]["intermediate_size"] == 96
    assert not list(workdir.glob(".pruned-*"))  # the intermediate folder is gone
    assert captions_from_the_loader(out)[1][0]


def test_usage_errors_exit_2_with_one_line(
    workdir: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ["optimize", "--model", str(tiny_model_dir), "--out", str(workdir / "out")]
    refusals = [
        (["optimize", "--model", str(workdir), "--out", "o", "--int8"], "no model there"),
        ([*model, "--prune", "1.0"], "--prune takes the share of the MLP width to remove, in (0, 1)"),
        ([*model, "--int8", "--images", "."], "--images go with --prune"),
        ([*model, "--prune", "0.5", "--teacher", str(tiny_model_dir)], "give --images DIR to fine-tune on"),
        (["optimize", "--model", str(tiny_model_dir), "--out", str(tiny_model_dir), "--int8"], "is the --model"),
    ]
    for argv, message in refusals:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as refused:  # neither --int8 nor --prune: argparse's usage error
        main(model)
    assert refused.value.code == 2
    assert not (workdir / "out").exists()
