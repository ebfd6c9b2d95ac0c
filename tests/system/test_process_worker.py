"""The model in a process of its own (`model.worker: process`): the same captions as the thread, one shared slab
per batch, a failure fails one batch, a dead child is reported and respawned, and `close` stops it all."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from captioner.errors import ModelUnavailable
from captioner.model.blip import BlipCaptioner
from captioner.model.process_worker import ModelProcessError, ProcessCaptioner
from captioner.model.protocol import CaptionJob
from tests.support.images import photo
from tests.support.model import tiny_blip, tiny_settings
from tests.support.servers import LiveServer


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> BlipCaptioner:
    """The tiny model with the default options (SDPA attention, float32, no compile)."""
    return tiny_blip(tiny_model_dir)


@pytest.fixture(scope="module")
def jobs(reference: BlipCaptioner) -> list[CaptionJob]:
    return [CaptionJob(reference.preprocess(photo(seed)).pixel_values, 1 + seed % 3) for seed in range(6)]


def _texts(results: list[list[object]]) -> list[list[str]]:
    return [[caption.text for caption in captions] for captions in results]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def child(tiny_model_dir: Path) -> Iterator[ProcessCaptioner]:
    settings = tiny_settings(tiny_model_dir)
    captioner = ProcessCaptioner(tiny_model_dir, settings.model, settings.generation, settings.limits.max_pixels)
    yield captioner
    captioner.close()


def test_process_worker_captions_like_the_thread(
    child: ProcessCaptioner, reference: BlipCaptioner, jobs: list[CaptionJob]
) -> None:
    assert (child.name, child.device, child.dtype, child.untrained) == ("test/tiny-blip", "cpu", "float32", True)
    assert child.pid is not None and child.pid != os.getpid()
    child.warm_up()
    got, want = child.caption_batch(jobs), reference.caption_batch(jobs)
    assert _texts(got) == _texts(want)
    for mine, theirs in zip(got, want, strict=True):
        assert [c.confidence for c in mine] == pytest.approx([c.confidence for c in theirs], rel=1e-5)
    assert child.caption_batch([]) == []
    assert child.measure_batch_limit(128) is None  # batching.auto_batch_size reaches the child's model: no GPU here


def test_process_worker_batches_travel_in_one_shared_slab(
    child: ProcessCaptioner, reference: BlipCaptioner, jobs: list[CaptionJob]
) -> None:
    """A batch is written into a buffer the child holds; a new one is handed over only when a batch outgrows it."""
    child._child.slab = None  # as a new child: the next batch hands it a slab
    slabs = []
    for n in (2, 3, 1, 3, 2):
        assert _texts(child.caption_batch(jobs[:n])) == _texts(reference.caption_batch(jobs[:n]))
        slabs.append(child._child.slab)
    assert [s.shape[0] for s in slabs if s is not None] == [2, 4, 4, 4, 4]  # rows: powers of two
    assert slabs[1] is not None and slabs[1].is_shared()
    assert all(s is slabs[1] for s in slabs[2:])  # kept, not sent again


def test_process_worker_failure_fails_one_batch_only(child: ProcessCaptioner, jobs: list[CaptionJob]) -> None:
    with pytest.raises(ModelProcessError, match=r"RuntimeError|ValueError"):
        child.caption_batch([CaptionJob(torch.zeros(5, 7, 7))])  # not an image the model can take
    assert len(child.caption_batch(jobs[:2])) == 2


def test_process_worker_death_is_reported_and_close_stops_the_respawn(
    tiny_model_dir: Path, jobs: list[CaptionJob]
) -> None:
    settings = tiny_settings(tiny_model_dir, health={"respawn_backoff_s": 30, "respawn_max_backoff_s": 30})
    captioner = ProcessCaptioner(
        tiny_model_dir, settings.model, settings.generation, settings.limits.max_pixels, health=settings.health
    )
    assert captioner.pid is not None
    os.kill(captioner.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while captioner.up:  # the supervisor notices
        assert time.monotonic() < deadline, "the death was never noticed"
        time.sleep(0.01)
    with pytest.raises(ModelUnavailable) as down:
        captioner.caption_batch(jobs[:1])
    assert down.value.status_code == 503 and int(down.value.headers["Retry-After"]) > 1  # the respawn is 30 s off
    captioner.close()  # during the backoff: no respawn follows
    assert not captioner._supervisor.is_alive() and captioner.respawns == 0
    captioner.close()  # idempotent
    with pytest.raises(ModelProcessError, match="stopped"):
        captioner.caption_batch(jobs[:1])


def test_server_with_process_worker(tiny_model_dir: Path) -> None:
    settings = tiny_settings(tiny_model_dir, model={"worker": "process"})
    with LiveServer(settings) as server:
        answers = [
            httpx.post(server.url + "/api/v1/caption", content=photo(seed, fmt="JPEG"),
                       headers={"Content-Type": "image/jpeg"}, timeout=60)
            for seed in (1, 2)
        ]  # fmt: skip
        for answer in answers:
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["captions"][0]["text"] and 0 < body["captions"][0]["confidence"] <= 1
        service = server.app.state.captioner.pool.router.any_service()
        assert isinstance(service.captioner, ProcessCaptioner)
        child = service.captioner._child.process
    assert not child.is_alive()  # the service closed its model process on shutdown


def test_close_during_a_respawn_stops_the_new_child_too(tiny_model_dir: Path) -> None:
    settings = tiny_settings(tiny_model_dir, health={"respawn_backoff_s": 0.01})
    captioner = ProcessCaptioner(
        tiny_model_dir, settings.model, settings.generation, settings.limits.max_pixels, health=settings.health
    )
    assert captioner.pid is not None
    os.kill(captioner.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (respawning := captioner._spawning) is None:  # the replacement is loading
        assert time.monotonic() < deadline and captioner.respawns == 0, "no respawn was started"
        time.sleep(0.005)
    captioner.close()
    assert not captioner._supervisor.is_alive() and captioner.respawns == 0
    respawning.process.join(10)
    assert not respawning.process.is_alive()  # no orphaned model process
