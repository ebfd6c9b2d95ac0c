"""`captioner eval` refuses a bad annotations file with exit 2 and a message naming what is wrong (no model loads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.cli import main


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPTIONER_MODEL__PATH", str(tmp_path / "no-model-here"))  # never loaded: refused first
    monkeypatch.setenv("CAPTIONER_MODEL__NAME", "test/tiny-blip")
    monkeypatch.setenv("CAPTIONER_MODEL__DEVICE", "cpu")  # as tiny_settings: compared with the server's answers
    monkeypatch.setenv("CAPTIONER_MODEL__WORKER", "thread")  # as tiny_settings: in process, started in a second
    return tmp_path


def test_bad_annotations_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "images").mkdir()
    for content, message in (
        ("{not json", "not valid JSON"),
        ('{"images": []}', "'annotations' list"),
        ('{"images": [{"id": 1}], "annotations": []}', "images[0] needs 'id' and 'file_name'"),
        ('{"images": [{"id": 1, "file_name": "x.png"}], "annotations": []}', "no image has a reference caption"),
    ):
        (workdir / "ann.json").write_text(content)
        assert main(["eval", "--annotations", "ann.json", "--images", "images"]) == 2
        assert message in capsys.readouterr().err
