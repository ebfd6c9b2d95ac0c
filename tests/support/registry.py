"""Helpers for the registry system tests: the CLI in a subprocess, models with known behaviour, steady load."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.images import photo
from tests.support.processes import with_repo_on_path
from tests.support.waits import wait_for

CAPTION = "/api/v1/caption"


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 600
) -> subprocess.CompletedProcess[str]:
    """``python -m captioner ARGS`` in ``cwd`` (which holds no config.yaml), this checkout's code."""
    environment = with_repo_on_path({**os.environ, "CAPTIONER_LOGGING__LEVEL": "warning", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "captioner", *args],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip


def last_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().splitlines()[-1]


def confident_copy(source: Path, out: Path, factor: float = 4.0) -> Path:
    """``source`` with its decoder's output sharpened: the same kind of captions, much higher confidence.

    Scaling the prediction head's last LayerNorm scales every logit (a lower softmax temperature), so the top
    caption's geometric-mean token probability rises from ~0.4 (the untrained tiny model) to ~0.8.
    """
    import torch
    from transformers import BlipForConditionalGeneration

    shutil.copytree(source, out)
    model = BlipForConditionalGeneration.from_pretrained(source)
    norm = model.text_decoder.cls.predictions.transform.LayerNorm
    with torch.no_grad():
        norm.weight.mul_(factor)
        norm.bias.mul_(factor)
    model.save_pretrained(out)
    return out


@dataclass
class Load:
    """Steady caption traffic from client threads; every request counted, every answer kept in order."""

    url: str
    threads: int = 2
    image_of: Callable[[int], bytes] = photo  # the body of the n-th request of a client
    answers: list[list[tuple[float, str]]] = field(default_factory=list)  # per thread: (start time, model)
    failures: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self.answers = [[] for _ in range(self.threads)]
        self._workers = [threading.Thread(target=self._client, args=(i,)) for i in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=120)

    def _client(self, index: int) -> None:
        try:
            with httpx.Client(timeout=60) as http:
                seed = 10_000 * (index + 1)
                while not self._stop.is_set():
                    seed += 1
                    started = time.monotonic()
                    with self._lock:
                        self.sent += 1
                    body = self.image_of(seed)
                    response = http.post(self.url + CAPTION, content=body, headers={"Content-Type": "image/png"})
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code}: {response.text}")
                        continue
                    self.answers[index].append((started, response.json()["model"]))
        except BaseException as exc:
            self.errors.append(exc)

    def answered(self) -> int:
        return sum(len(a) for a in self.answers)

    def models(self) -> set[str]:
        return {model for answers in self.answers for _, model in answers}

    def until(self, condition: Callable[[], Any], what: str, timeout_s: float = 180) -> None:
        """Wait for ``condition``; a client thread's exception fails at once instead of at the deadline."""

        def holds() -> Any:
            assert not self.errors, self.errors
            return condition()

        wait_for(holds, what, timeout_s)


def gate_set_from(model_dir: Path, out: Path, count: int = 6) -> tuple[Path, Path]:
    """A gate set whose references are what ``model_dir`` says: that model scores high on it, any other low."""
    from captioner.config import load_settings
    from captioner.model.loader import load_captioner
    from tests.support.model import write_self_annotated

    out.mkdir(parents=True)
    # The default settings, as the gate's evaluation captions with them: the model scores high on its own answers.
    model = load_captioner(load_settings(None, {}).replace("model", path=str(model_dir)))
    return write_self_annotated(model, [photo(900 + i) for i in range(count)], out), out
