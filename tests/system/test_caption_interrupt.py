"""`captioner caption` in a subprocess: interrupted with Ctrl-C (SIGINT) half way, then resumed where it stopped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.images import photo

MODEL_NAME = "test/tiny-blip"


@pytest.fixture
def workdir(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder as the working directory (no config.yaml), with the tiny model configured by env."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPTIONER_MODEL__PATH", str(tiny_model_dir))
    monkeypatch.setenv("CAPTIONER_MODEL__NAME", MODEL_NAME)
    monkeypatch.setenv("CAPTIONER_MODEL__DEVICE", "cpu")  # as tiny_settings: compared with the server's answers
    monkeypatch.setenv("CAPTIONER_MODEL__WORKER", "thread")  # as tiny_settings: in process, started in a second
    monkeypatch.delenv("CAPTIONER_API_KEY", raising=False)
    return tmp_path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.system
def test_ctrl_c_then_resume(workdir: Path, tiny_model_dir: Path) -> None:
    """A real interrupted run (SIGINT to the process), then the same command finishing the job."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = workdir / "many"
    folder.mkdir()
    for seed in range(40):
        (folder / f"{seed:03d}.png").write_bytes(photo(200 + seed))
    out = workdir / "many.jsonl"
    command = [sys.executable, "-m", "captioner", "caption", "many", "--out", str(out), "--batch-size", "2"]
    # Long, wide generation so the run takes seconds: there is time to interrupt it in the middle.
    slow = {"CAPTIONER_GENERATION__NUM_BEAMS": "4", "CAPTIONER_GENERATION__MIN_LENGTH": "30",
            "CAPTIONER_GENERATION__MAX_LENGTH": "30"}  # fmt: skip
    # SIGINT back to its default in the child: a shell that runs the suite in the background (`make test &`)
    # ignores SIGINT, the child would inherit that, and Python would then never raise KeyboardInterrupt.
    process = subprocess.Popen(
        command,
        env={**os.environ, **slow},
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)

    assert process.returncode == 130, err
    assert "run the same command to resume" in err
    partial = read_jsonl(out)  # every line is whole
    assert 2 <= len(partial) < 40

    finish = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    assert f"40 images found: {40 - len(partial)} captioned, {len(partial)} already done" in finish.stderr
    records = read_jsonl(out)
    assert records[: len(partial)] == partial
    assert sorted(r["path"] for r in records) == [f"many/{seed:03d}.png" for seed in range(40)]
