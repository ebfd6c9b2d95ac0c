"""deploy/ checked by the real tools: nginx accepts deploy/nginx.conf and answers its own errors in the API's shape,
and check-jsonschema validates compose.yaml against the Compose spec (and catches a mistake)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from captioner.config import Settings
from captioner.http.body import body_limit
from tests.support.deploy import DEPLOY, compose
from tests.support.net import free_port
from tests.support.nginx import Nginx

DEFAULTS = Settings()


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    result = Nginx(tmp_path, upstream_ports=[free_port(), free_port()]).check()
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_nginx_answers_its_own_errors_in_the_api_error_shape(tmp_path: Path) -> None:
    # Both upstreams are closed ports: every replica is down.
    with Nginx(tmp_path, upstream_ports=[free_port(), free_port()]) as nginx:
        down = httpx.post(nginx.url + "/api/v1/caption", content=b"x", headers={"Content-Type": "image/png"})
        assert down.status_code == 503
        assert down.headers["retry-after"] == "1"
        assert down.json() == {
            "status": "error",
            "error": {"code": "overloaded", "message": "no captioner replica is available, retry later"},
        }
        limit = body_limit("application/json", DEFAULTS.limits.max_body_bytes)
        too_big = httpx.post(
            nginx.url + "/api/v1/caption", content=b"0" * (limit + 1), headers={"Content-Type": "application/json"}
        )
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "too_large"
        metrics = httpx.get(nginx.url + "/metrics")
        assert metrics.status_code == 404 and metrics.json()["error"]["code"] == "not_found"
        assert down.headers.get("server") == "nginx"  # server_tokens off: no version


def test_compose_file_validates_against_the_compose_spec() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(DEPLOY / "compose.yaml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_catches_a_mistake(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["nginx"]["depends_on"] = {"captioner-1": {"condition": "when_it_feels_like_it"}}
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
