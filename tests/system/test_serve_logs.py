"""`captioner serve` with `logging.format: json`: only JSON lines on stderr, from the start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.images import photo
from tests.support.net import free_port
from tests.support.waits import PROBE_TIMEOUT_S

CAPTION = "/api/v1/caption"
API_KEY = "s3cret-Key-that-must-never-be-logged"


@pytest.mark.system
def test_serve_writes_only_json_lines_to_stderr(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "captioner.yaml"
    config.write_text(
        f"model: {{path: {tiny_model_dir}, name: test/tiny-blip, device: cpu}}\n"
        "generation: {num_beams: 1, max_length: 8, min_length: 1}\n"
    )
    env = {
        **os.environ,
        "CAPTIONER_SERVER__HOST": "0.0.0.0",  # no auth on every interface, on purpose: must still warn
        "CAPTIONER_AUTH__ALLOW_ANONYMOUS": "true",
        "CAPTIONER_SERVER__PORT": str(port),
        "CAPTIONER_LOGGING__FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "captioner", "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(url + "/readyz", timeout=PROBE_TIMEOUT_S).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        headers = {"Content-Type": "image/png", "X-Request-ID": "serve-1", "Authorization": f"Bearer {API_KEY}"}
        response = httpx.post(url + CAPTION, content=photo(7100), headers=headers, timeout=60)
        assert response.status_code == 200 and response.headers["x-request-id"] == "serve-1"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr

    lines = [line for line in stderr.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line: no tqdm bars, no raw warnings
    by_message = {e["message"].split(":")[0]: e for e in entries}
    start = next(e for e in entries if e["message"].startswith("starting captioner"))
    assert start["config_source"] == f"{config} + environment" and start["model"] == "test/tiny-blip"
    no_auth = next(e for e in entries if e.get("event") == "no_auth")
    assert no_auth["level"] == "warning" and "no API keys" in no_auth["message"]
    untrained = next(e for e in entries if "UNTRAINED" in e["message"])
    assert untrained["level"] == "warning"
    ready = by_message["ready"]
    assert (ready["model"], ready["device"], ready["dtype"], ready["untrained"]) == (
        "test/tiny-blip", "cpu", "float32", True,
    )  # fmt: skip
    request = next(e for e in entries if e.get("request_id") == "serve-1")
    assert (request["status"], request["path"], request["cached"], request["batch_size"]) == (200, CAPTION, False, 1)
    assert API_KEY not in stderr
