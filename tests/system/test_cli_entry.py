"""The command line in a subprocess: `python -m captioner` behaves like the console script, and `serve` without weights
and without network fails with one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_python_dash_m_behaves_like_the_console_script() -> None:
    out = subprocess.run([sys.executable, "-m", "captioner", "--help"], capture_output=True, text=True, check=True)
    assert "serve" in out.stdout and "init-model" in out.stdout


def test_serve_without_weights_and_without_network_fails_with_one_clear_line(tmp_path: Path) -> None:
    env = {
        "CAPTIONER_MODEL__PATH": str(tmp_path / "empty"),
        "CAPTIONER_MODEL__NAME": "nobody/no-such-model",
        "HF_HUB_OFFLINE": "1",
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-m", "captioner", "serve", "--port", "8799"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert "captioner init-model" in last and str(tmp_path / "empty") in last
