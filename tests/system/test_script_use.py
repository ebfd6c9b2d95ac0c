"""The model loader used from a user's own script, with the default process worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.images import photo
from tests.support.paths import REPO_ROOT

SCRIPT = """
import sys

from captioner.config import load_settings
from captioner.model.loader import load_captioner
from captioner.model.protocol import CaptionJob

settings = load_settings(None, {"CAPTIONER_MODEL__PATH": sys.argv[1], "CAPTIONER_MODEL__DEVICE": "cpu"})
captioner = load_captioner(settings)  # at the top level: no `if __name__ == "__main__":` guard
pixels = captioner.preprocess(open(sys.argv[2], "rb").read()).pixel_values
captions = captioner.caption_batch([CaptionJob(pixels)])
print(type(captioner).__name__, len(captions), bool(captions[0][0].text))
captioner.close()
"""


def test_a_script_without_a_main_guard_loads_the_model_process_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    # spawn would re-run the script inside the model process, which would load the model again (refused there).
    script, image = tmp_path / "caption_one.py", tmp_path / "one.jpg"
    script.write_text(SCRIPT)
    image.write_bytes(photo(3, fmt="JPEG"))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir), str(image)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ProcessCaptioner", "1", "True"]
