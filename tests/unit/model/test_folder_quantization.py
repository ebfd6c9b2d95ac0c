"""The INT8 marker ``captioner optimize --int8`` leaves in a model folder, as the loader reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.model.folder_quantization import QUANTIZATION_FILE, folder_quantization, write_int8_marker


def test_a_folder_without_the_marker_is_not_quantised(tmp_path: Path) -> None:
    assert folder_quantization(tmp_path) == "none"


def test_the_marker_written_is_read_as_int8(tmp_path: Path) -> None:
    write_int8_marker(tmp_path)
    assert folder_quantization(tmp_path) == "int8"


def test_a_marker_this_version_does_not_know_is_refused(tmp_path: Path) -> None:
    (tmp_path / QUANTIZATION_FILE).write_text('{"method": "static", "dtype": "qint4"}')
    with pytest.raises(ValueError, match="unknown quantisation"):
        folder_quantization(tmp_path)
    (tmp_path / QUANTIZATION_FILE).write_text("{")
    with pytest.raises(ValueError, match="unreadable"):
        folder_quantization(tmp_path)
