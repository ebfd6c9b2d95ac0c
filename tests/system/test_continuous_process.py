"""``batching.mode: continuous`` with the model in its own process (``model.worker: process``): the child runs the
decode loop; images cross in a shared slab, answers come back as they end; a child killed mid-decode fails the
requests it held (ModelProcessDied), is respawned, and decodes again; so is a stuck one, by the watchdog; the server
end to end, metrics included."""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from captioner.model.blip import BlipCaptioner
from captioner.model.process_worker import ModelProcessDied, ProcessCaptioner
from captioner.model.protocol import Caption, CaptionJob, DecodeProgress
from tests.support.images import photo
from tests.support.model import tiny_blip, tiny_settings
from tests.support.servers import LiveServer
from tests.support.waits import wait_for

SLOTS = 8


class Sink:
    def __init__(self) -> None:
        self.captions: dict[int, list[Caption]] = {}
        self.errors: dict[int, BaseException] = {}
        self.reports: list[DecodeProgress] = []
        self._lock = threading.Lock()

    def finished(self, request_id: int, captions: list[Caption], first_token_s: float) -> None:
        with self._lock:
            self.captions[request_id] = captions

    def failed(self, request_id: int, error: BaseException) -> None:
        with self._lock:
            self.errors[request_id] = error

    def progress(self, progress: DecodeProgress) -> None:
        self.reports.append(progress)

    def answered(self) -> int:
        return len(self.captions) + len(self.errors)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> BlipCaptioner:
    return tiny_blip(tiny_model_dir)


@pytest.fixture(scope="module")
def jobs(reference: BlipCaptioner) -> list[CaptionJob]:
    return [CaptionJob(reference.preprocess(photo(seed)).pixel_values, 1 + seed % 3) for seed in range(6)]


@pytest.fixture
def child(tiny_model_dir: Path) -> Iterator[ProcessCaptioner]:
    settings = tiny_settings(tiny_model_dir, health={"respawn_backoff_s": 0.05})
    captioner = ProcessCaptioner(
        tiny_model_dir,
        settings.model,
        settings.generation,
        settings.limits.max_pixels,
        health=settings.health,
        decode_slots=SLOTS,
    )
    yield captioner
    captioner.close()


def test_the_child_decodes_joined_images_like_static_batching(
    child: ProcessCaptioner, reference: BlipCaptioner, jobs: list[CaptionJob]
) -> None:
    sink = Sink()
    decoding = child.start_decoding(sink)
    for request_id, job in enumerate(jobs):
        decoding.join(request_id, job)
    wait_for(lambda: sink.answered() == len(jobs), "every answer")
    assert not sink.errors
    want = reference.caption_batch(jobs)
    for request_id, captions in sink.captions.items():
        assert [c.text for c in captions] == [c.text for c in want[request_id]]
        assert [c.confidence for c in captions] == pytest.approx([c.confidence for c in want[request_id]], abs=1e-5)
    wait_for(lambda: sink.reports and sink.reports[-1].rows == 0, "the idle report")
    assert sink.reports[-1].steps > 0
    child.warm_up()  # the control pipe still answers (the health probe's path) while in the decode loop


def test_a_child_killed_mid_decode_fails_its_requests_and_its_successor_decodes(
    child: ProcessCaptioner, jobs: list[CaptionJob]
) -> None:
    sink = Sink()
    decoding = child.start_decoding(sink)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGSTOP)  # the joins wait in its pipe: it dies holding them all
    for request_id, job in enumerate(jobs):
        decoding.join(request_id, job)
    os.kill(child.pid, signal.SIGKILL)
    wait_for(lambda: len(sink.errors) == len(jobs), "every request failed")
    assert all(isinstance(e, ModelProcessDied) for e in sink.errors.values()) and not sink.captions
    wait_for(lambda: child.up and child.respawns == 1, "the respawn")
    decoding.join(100, jobs[0])
    wait_for(lambda: 100 in sink.captions, "an answer from the new child")


def test_server_in_continuous_mode_with_the_process_worker(tiny_model_dir: Path, reference: BlipCaptioner) -> None:
    settings = tiny_settings(tiny_model_dir, model={"worker": "process"}, batching={"mode": "continuous"})
    images = [photo(seed, fmt="JPEG") for seed in (1, 2, 3)]
    with LiveServer(settings) as server:
        answers = [
            httpx.post(server.url + "/api/v1/caption", content=data, headers={"Content-Type": "image/jpeg"}, timeout=60)
            for data in images
        ]
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
    want = reference.caption_batch([CaptionJob(reference.preprocess(data).pixel_values) for data in images])
    for answer, captions in zip(answers, want, strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.json()["captions"][0]["text"] == captions[0].text
    steps = re.search(r'^captioner_decode_steps_total\{variant="default"\} (\S+)$', metrics, re.MULTILINE)
    assert steps is not None and float(steps.group(1)) > 0


def test_a_stuck_child_holding_requests_is_killed_by_the_watchdog_and_respawned(
    tiny_model_dir: Path, jobs: list[CaptionJob]
) -> None:
    settings = tiny_settings(tiny_model_dir, health={"respawn_backoff_s": 0.05, "watchdog_s": 1.0})
    captioner = ProcessCaptioner(
        tiny_model_dir,
        settings.model,
        settings.generation,
        settings.limits.max_pixels,
        health=settings.health,
        decode_slots=SLOTS,
    )
    try:
        sink = Sink()
        decoding = captioner.start_decoding(sink)
        assert captioner.pid is not None
        os.kill(captioner.pid, signal.SIGSTOP)  # stuck, not dead: only the watchdog can tell
        for request_id, job in enumerate(jobs):
            decoding.join(request_id, job)
        wait_for(lambda: len(sink.errors) == len(jobs), "the watchdog to fail the requests the stuck child held")
        assert all(isinstance(e, ModelProcessDied) for e in sink.errors.values())
        wait_for(lambda: captioner.up and captioner.respawns == 1, "the respawn")
        decoding.join(100, jobs[0])
        wait_for(lambda: 100 in sink.captions, "an answer from the new child")
    finally:
        captioner.close()
