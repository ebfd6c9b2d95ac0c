"""``captioner cascade calibrate`` on the real tiny models, in process: the second (seed 0) wrote the set's
references, so it scores high and the first (seed 1) low; the chosen threshold must keep the CIDEr within the
allowed drop. The sweep's rule itself: tests/unit/tools/test_cascade_sweep.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioner.cli import main
from tests.support.model import annotated_by


def test_calibrate_prints_the_table_and_the_threshold_and_writes_the_figures(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from captioner.tools.init_model import write_untrained_model

    first = write_untrained_model(tmp_path / "student", size="tiny", seed=1)
    annotations = annotated_by(tiny_model_dir, tmp_path / "set")
    config = tmp_path / "config.yaml"
    config.write_text("model: {device: cpu, worker: thread}\nbatching: {max_batch_size: 4, max_wait_ms: 0}\n")
    common = ["cascade", "calibrate", "--config", str(config), "--annotations", str(annotations),
              "--images", str(tmp_path / "set"), "--first", str(first), "--second", str(tiny_model_dir)]  # fmt: skip

    assert main([*common, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {"threshold", "escalated_share", "model_time_saved", "cider_first", "cider_second",
                            "cider_cascade"}  # fmt: skip
    assert summary["cider_second"] > summary["cider_first"]
    assert summary["cider_cascade"] >= summary["cider_second"] * (1 - 0.03)
    assert 0.0 <= summary["threshold"] <= 1.0 and summary["escalated_share"] > 0
    card = json.loads((first / "cascade.json").read_text())
    assert card["threshold"] == summary["threshold"] and card["first_s_per_image"] > 0 and card["table"]

    assert main([*common, "--max-cider-drop", "1.0"]) == 2  # out of range: refused before any work
    assert main([*common, "--out", str(tmp_path / "figures.json")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "threshold" in lines[1] and any(line.endswith("<- chosen") for line in lines)
    assert 0.0 <= float(lines[-1]) <= 1.0  # the last line: the threshold alone
    assert json.loads((tmp_path / "figures.json").read_text())["threshold"] == float(lines[-1])
