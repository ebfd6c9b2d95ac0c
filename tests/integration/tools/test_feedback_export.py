"""``captioner feedback export``: ratings posted to a real server come out as COCO annotations ``eval`` reads."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from captioner.cli import main
from captioner.client import Client
from captioner.tools.eval.command import load_annotations
from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer


def test_corrections_export_as_coco_with_the_kept_images(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "feedback"
    settings = tiny_settings(tiny_model_dir, feedback={"path": str(folder), "keep_images": True})
    with LiveServer(settings) as server, Client(server.url) as client:
        first, second = client.caption(photo(51)), client.caption(photo(52))
        client.feedback(image_sha256=first.image_sha256, caption=first.text, rating=1, correction="a red ball")
        client.feedback(image_sha256=first.image_sha256, caption=first.text, rating=2, correction="a red ball")
        client.feedback(image_sha256=second.image_sha256, caption=second.text, rating=5)  # approval, no correction
        with_image = {
            "image_sha256": first.image_sha256,
            "caption": first.text,
            "rating": 2,
            "correction": "a ball on the grass",
            "image": base64.b64encode(photo(51)).decode(),
        }
        assert httpx.post(server.url + "/api/v1/feedback", json=with_image).status_code == 202
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPTIONER_FEEDBACK__PATH", str(folder))

    assert main(["feedback", "export", "--out", "coco.json", "--images", "images"]) == 0

    images, notes = load_annotations(tmp_path / "coco.json")
    assert [(image.file_name, image.references) for image in images] == [
        (first.image_sha256, ("a red ball", "a ball on the grass"))  # one per distinct correction, oldest first
    ]
    assert notes == []
    assert (tmp_path / "images" / first.image_sha256).read_bytes() == photo(51)
    assert "2 corrected captions of 1 images in coco.json; 1 kept images written to images" in capsys.readouterr().out


def test_nothing_to_export_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPTIONER_FEEDBACK__PATH", str(tmp_path / "none"))

    assert main(["feedback", "export", "--out", "coco.json"]) == 0

    assert "no feedback with a correction" in capsys.readouterr().err
    assert load_annotations(tmp_path / "coco.json") == ([], [])  # valid, and empty
