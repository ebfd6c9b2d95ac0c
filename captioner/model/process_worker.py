"""``model.worker: process``: BLIP runs in a child process, with an interpreter (and a GIL) of its own.

Why: ``generate`` is a Python loop around many small tensor operations (beam search bookkeeping, one decoder
step per token), and each operation hands the GIL back and forth. In the server process the event loop and the
decoding threads want the GIL too, so the model thread waits for it after nearly every operation. On 2 CPU
cores that halved the tiny model's throughput (docs/benchmarks.md); a GPU, launching kernels from Python, is
hurt the same way. In its own process the model never waits for anyone.

Split: the server process keeps everything per request (HTTP, hashing, cache, decoding and resizing on its
thread pool, the batcher); the child only runs batches. A batch crosses as one stacked tensor in shared memory
(torch's multiprocessing reductions pass a file descriptor, not the pixels) plus the captions wanted per image;
captions come back pickled. Calls are serialised, one batch at a time, as on the model thread.

Failures: an exception in the child fails that batch only (``ModelProcessError`` with its message, the child's
traceback logged here) and the child carries on. If the child dies, every later call fails at once with
``ModelProcessError``; the batcher turns that into 500s, so health checks and alerts see it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import threading
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing

from captioner.config import GenerationSettings, ModelSettings
from captioner.model import acceleration
from captioner.model.blip import Preprocessing
from captioner.model.preprocessing import ImagePreprocessor
from captioner.model.protocol import Caption, CaptionJob

logger = logging.getLogger("captioner.model_process")


class ModelProcessError(RuntimeError):
    """The model process failed a batch, or is gone."""


class ProcessCaptioner(Preprocessing):
    """The ``Captioner`` protocol over a child process that holds a ``BlipCaptioner``."""

    def __init__(
        self,
        model_dir: Path,
        model: ModelSettings,
        generation: GenerationSettings,
        max_pixels: int,
        *,
        start_timeout_s: float = 900.0,
    ) -> None:
        # spawn, not fork: a forked child can't use CUDA, and must not inherit the server's threads and sockets.
        context = torch.multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        self._process = context.Process(
            target=_child_main,
            args=(child_end, str(model_dir), model, generation, max_pixels),
            name="captioner-model",
            daemon=True,  # never outlives the server
        )
        self._process.start()
        child_end.close()
        self._conn: Connection = parent_end
        self._lock = threading.Lock()
        self._closed = False
        atexit.register(self.close)
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise ModelProcessError(f"the model process did not start within {start_timeout_s:.0f} s")
        info: dict[str, Any] = self._reply("load")
        self.name: str = info["name"]
        self.revision: str = info["revision"]
        self.device: str = info["device"]
        self.dtype: str = info["dtype"]
        self.untrained: bool = info["untrained"]
        # Only decoding happens here, spread over the preprocessing threads: one intra-op thread each is right
        # (on the CPU); a team per thread would fight the others and the event loop for the cores.
        acceleration.set_threads(1, torch.device("cpu"))
        self._preprocessor = ImagePreprocessor.from_pretrained(model_dir, max_pixels=max_pixels)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def warm_up(self) -> None:
        self._call(("warm_up",))

    def caption_batch(self, jobs: Sequence[CaptionJob]) -> list[list[Caption]]:
        if not jobs:
            return []
        pixels = torch.stack([job.pixel_values for job in jobs])
        result: list[list[Caption]] = self._call(("batch", pixels, [job.num_captions for job in jobs]))
        return result

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the child, letting it finish the batch it is on for up to ``timeout_s``; idempotent."""
        acquired = self._lock.acquire(timeout=timeout_s)
        try:
            if self._closed:
                return
            self._closed = True
            if acquired:
                with contextlib.suppress(OSError, ValueError):  # already gone: nothing to stop
                    self._conn.send(("stop",))
                self._process.join(timeout_s)
        finally:
            if acquired:
                self._lock.release()
        if self._process.is_alive():  # a batch still running after timeout_s, or a child that won't stop
            self._process.kill()
            self._process.join(timeout_s)
        self._conn.close()

    # -- internals ---------------------------------------------------------------------------------

    def _call(self, message: tuple[Any, ...]) -> Any:
        with self._lock:
            if self._closed:
                raise ModelProcessError("the model process has been stopped")
            try:
                self._conn.send(message)
            except (OSError, ValueError) as exc:
                raise self._died() from exc
            return self._reply(message[0])

    def _reply(self, what: str) -> Any:
        try:
            status, payload, detail = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise self._died() from exc
        if status == "error":
            logger.error("the model process failed %s: %s\n%s", what, payload, detail)
            raise ModelProcessError(payload)
        return payload

    def _died(self) -> ModelProcessError:
        self._process.join(1.0)
        return ModelProcessError(f"the model process is gone (exit code {self._process.exitcode})")


def _child_main(
    conn: Connection, model_dir: str, model: ModelSettings, generation: GenerationSettings, max_pixels: int
) -> None:
    """The child: load, say what was loaded, then answer batches until told to stop or the parent goes."""
    # Ctrl-C reaches the whole process group; the parent decides when the model stops (after its drain).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from captioner.model.blip import BlipCaptioner  # in the child only: the parent never loads the model

    try:
        captioner = BlipCaptioner(Path(model_dir), model, generation, max_pixels)
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    info = {
        "name": captioner.name,
        "revision": captioner.revision,
        "device": captioner.device,
        "dtype": captioner.dtype,
        "untrained": captioner.untrained,
    }
    conn.send(("ok", info, ""))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the server is gone
        if message[0] == "stop":
            return
        try:
            if message[0] == "batch":
                _, pixels, counts = message
                result: Any = captioner.caption_batch([CaptionJob(pixels[i], n) for i, n in enumerate(counts)])
            elif message[0] == "warm_up":
                captioner.warm_up()
                result = None
            else:
                raise ValueError(f"unknown request {message[0]!r}")
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        else:
            conn.send(("ok", result, ""))
