"""Model health over HTTP, with the real tiny BLIP whose ``generate`` is made to fail: /readyz, the answers, metrics.

A CUDA error other than out-of-memory takes the replica out for good (and asks the server to exit: here the
``on_fatal`` hook records it; tests/system/test_model_health.py runs the real exit); failing batches take it out
until a probe batch passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from captioner.model.blip import BlipCaptioner
from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer

CAPTION = "/api/v1/caption"


class Faults:
    """What the real model's ``generate`` raises (None: it works)."""

    def __init__(self) -> None:
        self.error: Callable[[], BaseException] | None = None


@pytest.fixture(scope="module")
def blip(tiny_model_dir: Path) -> BlipCaptioner:
    settings = tiny_settings(tiny_model_dir)
    return BlipCaptioner(Path(settings.model.path), settings.model, settings.generation, settings.limits.max_pixels)


@pytest.fixture
def faults(blip: BlipCaptioner) -> Iterator[Faults]:
    model: Any = blip._model
    original = model.generate
    faults = Faults()

    def generate(*args: Any, **kwargs: Any) -> Any:
        if faults.error is not None:
            raise faults.error()
        return original(*args, **kwargs)

    model.generate = generate
    try:
        yield faults
    finally:
        del model.generate


def post(server: LiveServer, seed: int) -> httpx.Response:
    return httpx.post(server.url + CAPTION, content=photo(seed), headers={"Content-Type": "image/png"}, timeout=60)


def readyz(server: LiveServer) -> httpx.Response:
    return httpx.get(server.url + "/readyz", timeout=10)


def test_a_cuda_error_takes_the_replica_out_and_asks_for_a_restart(
    blip: BlipCaptioner, faults: Faults, tiny_model_dir: Path
) -> None:
    fatal: list[bool] = []
    with LiveServer(tiny_settings(tiny_model_dir), captioner=blip, on_fatal=lambda: fatal.append(True)) as server:
        assert post(server, 1).status_code == 200
        assert server.metric("captioner_ready") == 1 and server.metric("captioner_model_up") == 1

        faults.error = lambda: torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
        broken = post(server, 2)
        assert broken.status_code == 500 and broken.json()["error"]["code"] == "model_error"
        assert "CUDA" not in broken.text  # the message stays generic

        ready = readyz(server)
        assert ready.status_code == 503
        assert ready.json()["status"] == "failed"  # the device error's text is in the log, not on an open probe
        refused = post(server, 3)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
        assert refused.headers["retry-after"] == "1"
        cached = post(server, 1)  # what it can still answer, it answers
        assert cached.status_code == 200 and cached.json()["cached"] is True
        assert httpx.get(server.url + "/healthz").status_code == 200  # alive: it exits by itself (on_fatal)
        assert fatal == [True]
        assert server.metric("captioner_ready") == 0 and server.metric("captioner_model_up") == 0


def test_failing_batches_take_the_replica_out_until_a_probe_passes(
    blip: BlipCaptioner, faults: Faults, tiny_model_dir: Path
) -> None:
    settings = tiny_settings(tiny_model_dir, health={"max_consecutive_failures": 2, "probe_interval_s": 0.2})
    fatal: list[bool] = []
    with LiveServer(settings, captioner=blip, on_fatal=lambda: fatal.append(True)) as server:
        assert post(server, 10).status_code == 200
        faults.error = lambda: RuntimeError("generate exploded")
        for seed in (11, 12):
            assert post(server, seed).status_code == 500
        ready = readyz(server)
        assert ready.status_code == 503 and ready.json()["status"].startswith("model failing: ")
        assert server.metric("captioner_model_consecutive_failures") >= 2
        refused = post(server, 13)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
        assert int(refused.headers["retry-after"]) >= 1

        faults.error = None  # the next probe batch passes: ready again, with no request needed
        deadline = time.monotonic() + 60
        while readyz(server).status_code != 200:
            assert time.monotonic() < deadline, "not ready again after the model recovered"
            time.sleep(0.05)
        assert post(server, 14).status_code == 200
        assert server.metric("captioner_model_consecutive_failures") == 0 and server.metric("captioner_ready") == 1
        assert fatal == []
