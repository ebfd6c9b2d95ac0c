"""Drift monitoring wired into the server: real images through real HTTP, scores on /api/v1/drift and /metrics,
warnings in the log, and references saved with `captioner drift save-reference` (from a server or a folder)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from captioner.cli import main
from captioner.config import ConfigError
from captioner.model.preprocessing import ImagePreprocessor, pixel_sample
from captioner.observability.drift_features import INPUT_NUMERIC
from captioner.rollout.drift_watch import features_of
from tests.support.drift import FAST, send
from tests.support.images import dark_tiny, normal_photo, photo
from tests.support.model import tiny_settings
from tests.support.net import free_port
from tests.support.servers import LiveServer

CAPTION = "/api/v1/caption"
INPUTS = (*INPUT_NUMERIC, "format")
OUTPUTS = ("confidence", "caption_length", "vocabulary")
WINDOW = 300


def drift_scores(url: str) -> dict[str, Any]:
    response = httpx.get(url + "/api/v1/drift")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def psi_of(report: dict[str, Any], feature: str) -> float:
    value = report["features"][feature]["psi"]
    assert value is not None, feature
    return float(value)


@pytest.fixture(scope="module")
def drift_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    settings = tiny_settings(
        tiny_model_dir,
        generation=FAST,
        batching={"max_batch_size": 32, "max_wait_ms": 20},
        drift={"window": WINDOW, "reference_size": WINDOW, "min_window": 100},
    )
    with LiveServer(settings) as server:
        yield server


def test_same_photos_then_dark_tiny_images_through_http(
    drift_server: LiveServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    url = drift_server.url
    caplog.set_level(logging.WARNING, logger="captioner.drift")
    empty = drift_scores(url)
    assert empty["enabled"] is True and empty["reference"]["complete"] is False
    assert all(f["psi"] is None for f in empty["features"].values())
    assert drift_server.metric("captioner_drift_psi_threshold") == 0.2

    send(url, [normal_photo(seed) for seed in range(WINDOW)])  # the reference: the first 300 requests
    send(url, [normal_photo(seed) for seed in range(10_000, 10_000 + WINDOW)])  # more of the same
    same = drift_scores(url)
    assert same["reference"] == {"source": "first N requests", "size": WINDOW, "complete": True}
    print("\nsame distribution over HTTP:", {k: round(v["psi"], 3) for k, v in same["features"].items()})
    for feature in INPUTS:
        assert psi_of(same, feature) < 0.2, (feature, same["features"][feature])
    assert not [r for r in caplog.records if r.name == "captioner.drift"]

    # Save the learnt reference now, before the drift, as an operator would after a good day.
    reference_file = tmp_path / "reference.json"
    assert main(["drift", "save-reference", "--server", url, "--out", str(reference_file)]) == 0

    send(url, [dark_tiny(seed) for seed in range(WINDOW)])
    dark = drift_scores(url)
    print("dark tiny images over HTTP:", {k: round(v["psi"], 3) for k, v in dark["features"].items()})
    for feature in ("brightness", "width", "height", "bytes"):
        assert psi_of(dark, feature) > 0.2, feature
        assert dark["features"][feature]["alert"] is True
        exported = drift_server.metric("captioner_drift_psi", f'feature="{feature}"')
        assert exported == pytest.approx(psi_of(dark, feature), rel=1e-6)
    warned = {r.feature for r in caplog.records if getattr(r, "event", None) == "drift_alert"}
    assert {"brightness", "width", "height", "bytes"} <= warned

    saved = json.loads(reference_file.read_text())
    assert set(saved["features"]) == {*INPUTS, *OUTPUTS} and saved["version"] == 1
    check_restart_with_reference(drift_server, reference_file)


def check_restart_with_reference(learnt_on: LiveServer, reference_file: Path) -> None:
    """A node started with the saved reference spots the dark images at once: no re-learning from them."""
    settings = learnt_on.settings.replace("drift", reference_path=str(reference_file), min_window=100)
    with LiveServer(settings) as server:
        report = drift_scores(server.url)
        assert report["reference"] == {"source": "file", "size": WINDOW, "complete": True}
        send(server.url, [dark_tiny(seed) for seed in range(50_000, 50_100)])
        after = drift_scores(server.url)
        assert psi_of(after, "brightness") > 0.2 and psi_of(after, "width") > 0.2
        assert server.metric("captioner_drift_psi", 'feature="brightness"') > 0.2


def test_server_and_cli_compute_the_same_features(tiny_model_dir: Path) -> None:
    server_side = ImagePreprocessor.from_pretrained(tiny_model_dir, max_pixels=40_000_000)
    cli_side = ImagePreprocessor(height=384, width=384, image_mean=(0, 0, 0), image_std=(1, 1, 1))
    for data, _ in (normal_photo(1), normal_photo(2), dark_tiny(3)):
        prepared = server_side(data)
        assert prepared.sample is not None and max(prepared.sample.size) <= 64
        image, info = cli_side.decode(data)
        assert features_of(prepared.sample, prepared.info, len(data)) == features_of(
            pixel_sample(image), info, len(data)
        )


def test_save_reference_refuses_what_it_cannot_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    out = tmp_path / "ref.json"
    assert main(["drift", "save-reference", "--images", str(empty), "--out", str(out)]) == 1
    assert "no decodable images" in capsys.readouterr().err and not out.exists()
    assert main(["drift", "save-reference", "--server", f"http://127.0.0.1:{free_port()}", "--out", str(out)]) == 1
    assert "cannot reach" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):  # one source is required
        main(["drift", "save-reference", "--out", str(out)])


def test_bad_reference_path_stops_start_up_naming_the_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    from captioner.http.app import create_app

    for content in (None, "not json", '{"version": 99}', '{"version": 1, "features": {"width": {"kind": "x"}}}'):
        path = tmp_path / "reference.json"
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(content)
        settings = tiny_settings(tiny_model_dir, drift={"reference_path": str(path)})
        with pytest.raises(ConfigError, match=r"^config: drift\.reference_path: "):
            create_app(settings)


def test_drift_off_and_behind_auth(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key, admin_key = "drift-test-key", "drift-admin-key"
    settings = tiny_settings(
        tiny_model_dir, drift={"enabled": False}, auth={"api_keys": [key], "admin_keys": [admin_key]}
    )
    with LiveServer(settings) as server:
        assert httpx.get(server.url + "/api/v1/drift").status_code == 401  # same rules as every /api/v1 route
        auth = {"Authorization": f"Bearer {key}"}
        admin = {"Authorization": f"Bearer {admin_key}"}
        # The drift report and reference summarise every caller's traffic: a plain key may not read them.
        for path in ("/api/v1/drift", "/api/v1/drift/reference"):
            refused = httpx.get(server.url + path, headers=auth)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
        assert httpx.get(server.url + "/api/v1/drift", headers=admin).json() == {"enabled": False, "features": {}}
        missing = httpx.get(server.url + "/api/v1/drift/reference", headers=admin)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        response = httpx.post(  # an admin key is an API key too
            server.url + CAPTION, content=photo(1), headers={**admin, "Content-Type": "image/png"}, timeout=60
        )
        assert response.status_code == 200
        metrics = httpx.get(server.url + "/metrics").text
        assert "captioner_drift_psi{" not in metrics

        out = tmp_path / "ref.json"
        save = ["drift", "save-reference", "--server", server.url, "--out", str(out)]
        monkeypatch.delenv("CAPTIONER_API_KEY", raising=False)
        assert main(save) == 1
        assert "wants an API key: set CAPTIONER_API_KEY" in capsys.readouterr().err
        monkeypatch.setenv("CAPTIONER_API_KEY", key)
        assert main(save) == 1
        assert "wants an admin key" in capsys.readouterr().err
        monkeypatch.setenv("CAPTIONER_API_KEY", admin_key)
        assert main(save) == 1
        assert "answered 404" in capsys.readouterr().err and not out.exists()
