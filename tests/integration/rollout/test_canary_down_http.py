"""A broken canary on a live server (issue 21, item 5.2): /readyz stays 200 (production serves), and the canary
analysis rolls the canary back with no traffic at all: at once when its model failed to load, else once it has
been down for ``canary.max_down_s``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer


def settings_with_canary(tiny_model_dir: Path, canary_path: Path) -> Any:
    fast = {"interval_s": 0.1, "max_down_s": 0.5}
    variants = [{"variant": "production", "weight": 90}, {"variant": "canary", "weight": 10, "path": str(canary_path)}]
    return tiny_settings(tiny_model_dir, canary=fast).replace("models", variants=variants)


def wait_for_rollback(server: LiveServer) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (report := httpx.get(server.url + "/api/v1/variants").json())["canary"]["state"] != "rolled_back":
        assert time.monotonic() < deadline, report
        time.sleep(0.05)
    return report


def assert_production_serves(server: LiveServer) -> None:
    assert httpx.get(server.url + "/readyz").status_code == 200
    for seed in range(3):  # the canary at weight 0 now: every image goes to production
        answer = httpx.post(server.url + "/api/v1/caption", content=photo(seed), timeout=60,
                            headers={"Content-Type": "image/png"})  # fmt: skip
        assert answer.status_code == 200 and answer.json()["variant"] == "production", answer.text


def test_a_canary_that_fails_to_load_leaves_production_ready_and_is_rolled_back(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    with LiveServer(settings_with_canary(tiny_model_dir, broken)) as server:  # waits for /readyz 200
        report = wait_for_rollback(server)
        assert report["canary"]["reason"] == "model_down"
        assert [v["variant"] for v in report["variants"]] == ["production"]
        assert server.metric("captioner_rollbacks_total", 'variant="canary",reason="model_down"') == 1
        assert_production_serves(server)


def test_a_canary_whose_model_goes_down_never_makes_the_replica_unready(tiny_model_dir: Path) -> None:
    with LiveServer(settings_with_canary(tiny_model_dir, tiny_model_dir)) as server:
        runtime = server.app.state.captioner
        canary = runtime.pool.router.get("canary")
        runtime.loop.call_soon_threadsafe(canary.service.health.model_down, "the model process exited", 30.0)
        deadline = time.monotonic() + 10
        while canary.service.health.unready_since is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert httpx.get(server.url + "/readyz").status_code == 200
        report = wait_for_rollback(server)
        assert report["canary"]["reason"] == "model_down" and "unable to serve" in report["canary"]["detail"]
        assert canary.weight == 0
        assert_production_serves(server)
