"""``python -m tests.support.faulty_serve serve ...``: the real ``captioner serve``, with a GPU failure on demand.

The CPU has no CUDA context to lose, so the failure is injected: once the file named by
``CAPTIONER_TEST_FAULT_FILE`` exists, the next batch waits for ``release_file(...)`` to exist too (so that a
test can queue requests behind it first), then raises the error torch raises after an illegal memory access,
as does every batch after it. Everything else (HTTP, the batcher, model health, the drain, the exit status)
is the real thing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from captioner.cli import main
from captioner.model.blip import BlipCaptioner
from captioner.model.protocol import Caption, CaptionJob

FAULT_FILE_ENV = "CAPTIONER_TEST_FAULT_FILE"


def release_file(trigger: Path) -> Path:
    return trigger.with_name(trigger.name + ".release")


def _install(trigger: Path) -> None:
    original = BlipCaptioner.caption_batch
    release = release_file(trigger)

    def caption_batch(self: BlipCaptioner, jobs: Sequence[CaptionJob]) -> list[list[Caption]]:
        if trigger.exists():
            deadline = time.monotonic() + 120
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.01)  # a kernel that takes its time to fail
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
        return original(self, jobs)

    BlipCaptioner.caption_batch = caption_batch  # type: ignore[method-assign]


if __name__ == "__main__":
    _install(Path(os.environ[FAULT_FILE_ENV]))
    raise SystemExit(main())
