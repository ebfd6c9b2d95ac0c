"""``model.worker: process``: BLIP runs in a child process, with an interpreter (and a GIL) of its own.

Why: ``generate`` is a Python loop around many small tensor operations (beam search bookkeeping, one decoder
step per token), and each operation hands the GIL back and forth. In the server process the event loop and the
decoding threads want the GIL too, so the model thread waits for it after nearly every operation. On 2 CPU
cores that halved the tiny model's throughput (docs/benchmarks.md); a GPU, launching kernels from Python, is
hurt the same way. In its own process the model never waits for anyone.

Split: the server process keeps everything per request (HTTP, hashing, cache, decoding and resizing on its
thread pool, the batcher); the child only runs batches. A batch crosses as one stacked tensor in shared memory
written into a slab the child was handed once (a new shared tensor per batch costs a round of file-descriptor
passing: 1.6 ms against 0.07 ms for 16 images at 64 px, 26 ms against 1.3 ms at 384 px, `bench.process_costs`),
so a batch message is its size and the captions wanted per image; captions come back pickled. Calls are
serialised, one batch at a time, as on the model thread.

Failures:
- An exception in the child fails that batch only (``ModelProcessError`` with its message, the child's
  traceback logged here) and the child carries on; after a fatal device error (device_errors.py) it exits
  instead, since only a new process gets a new CUDA context.
- A supervisor thread waits on the child. When it dies (killed, crashed, or that device error), the batch it
  was running fails with ``ModelProcessDied`` (the service answers it 503 ``ModelLost`` + Retry-After; a job in
  it goes back to the queue, counted, so an image that kills every process still ends), every
  call from then on fails at once with ``ModelUnavailable`` (503 + Retry-After, which a load balancer retries
  elsewhere), and the listener hears ``model_down``, which takes the replica out of /readyz. The child is
  respawned after a backoff (``health.respawn_backoff_s``, doubling per death in a row up to
  ``respawn_max_backoff_s``; a child that lived ``_STABLE_S`` resets it), warmed up, and ``model_up`` follows.
- A child that stops without dying (``kill -STOP``, a driver hang) is caught by the watchdog (watchdog.py,
  ``health.watchdog_s``): a batch in flight that long without an answer gets the child reported down
  (``model_stalled``), SIGKILLed and respawned like a dead one.
- A respawn that fails ``_MAX_FAILED_STARTS`` times in a row means the device itself is gone: ``model_failed``
  tells the server to exit non-zero, so the orchestrator restarts the replica.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing

from captioner.config import GenerationSettings, HealthSettings, ModelSettings
from captioner.errors import ModelUnavailable
from captioner.model import acceleration
from captioner.model.blip import Preprocessing
from captioner.model.child_control import EXIT_DEVICE_ERROR
from captioner.model.preprocessing import ImagePreprocessor
from captioner.model.process_child import child_main
from captioner.model.process_decoding import ProcessDecoding
from captioner.model.protocol import Caption, CaptionJob, DecodeSink, ModelListener, StepDecoding
from captioner.model.spawn import start_without_main
from captioner.model.watchdog import BatchWatchdog

logger = logging.getLogger("captioner.model_process")

# A child that lived this long died of something new: its successor starts again from the shortest backoff.
_STABLE_S = 60.0
# Respawns that fail (the child dies or errs before it is warm) this many times in a row: give up on the device.
_MAX_FAILED_STARTS = 3
# How often the supervisor looks up from waiting on the child, to notice close().
_SUPERVISOR_TICK_S = 0.5


class ModelProcessError(RuntimeError):
    """The model process failed a batch, or died while running it."""


class ModelProcessDied(ModelProcessError):
    """The model process died (crashed, was killed, or the watchdog killed it) before it answered."""


@dataclass
class _Child:
    process: BaseProcess
    conn: Connection
    started: float
    slab: torch.Tensor | None = None  # the shared batch buffer this child holds (sent with its first batch)
    decode_conn: Connection | None = None  # batching.mode: continuous: joins, leaves and answers (decode_child.py)


class ProcessCaptioner(Preprocessing):
    """The ``Captioner`` protocol over a supervised child process that holds a ``BlipCaptioner``."""

    def __init__(
        self,
        model_dir: Path,
        model: ModelSettings,
        generation: GenerationSettings,
        max_pixels: int,
        *,
        health: HealthSettings | None = None,
        start_timeout_s: float = 900.0,
        decode_slots: int = 0,
    ) -> None:
        """``decode_slots`` > 0: ``batching.mode: continuous``, the child runs the decode loop and holds at most
        that many requests at a time (process_decoding.py)."""
        # spawn, not fork: a forked child can't use CUDA, and must not inherit the server's threads and sockets.
        self._context = torch.multiprocessing.get_context("spawn")
        self._child_args = (str(model_dir), model, generation, max_pixels)
        self._start_timeout_s = start_timeout_s
        health = health or HealthSettings()
        self._backoff_min_s, self._backoff_max_s = health.respawn_backoff_s, health.respawn_max_backoff_s
        self._watchdog = BatchWatchdog(health.watchdog_s)
        self._killed_because: str | None = None  # the watchdog's reason, for the death that follows its kill
        self._lock = threading.Lock()  # one call at a time; also guards swapping in a respawned child
        self._closing = threading.Event()
        self._stopped = False
        self._up = False
        self._retry_at = 0.0  # while down: when the next respawn is due (for Retry-After)
        self._spawning: _Child | None = None
        self._listener: ModelListener | None = None
        self._decode_slots = decode_slots
        self._decoding: ProcessDecoding | None = None
        self.respawns = 0
        self._supervisor = threading.Thread(target=self._supervise, name="captioner-model-supervisor", daemon=True)
        self._child, info = self._spawn()
        self._up = True
        atexit.register(self.close)
        try:
            self.name: str = info["name"]
            self.revision: str = info["revision"]
            self.device: str = info["device"]
            self.dtype: str = info["dtype"]
            self.untrained: bool = info["untrained"]
            # Only decoding happens here, spread over the preprocessing threads: one intra-op thread each is
            # right (on the CPU); a team per thread would fight the others and the event loop for the cores.
            acceleration.set_threads(1, torch.device("cpu"))
            self._preprocessor = ImagePreprocessor.from_pretrained(model_dir, max_pixels=max_pixels)
        except BaseException:
            self.close()
            raise
        self._supervisor.start()

    @property
    def pid(self) -> int | None:
        return self._child.process.pid

    @property
    def up(self) -> bool:
        return self._up

    def watch(self, listener: ModelListener) -> None:
        """Report deaths, respawns and a lost device to ``listener`` (from the supervisor thread)."""
        self._listener = listener

    def warm_up(self) -> None:
        self._call(lambda _: ("warm_up",))

    def measure_batch_limit(self, limit: int) -> int | None:
        """``batching.auto_batch_size``: the child measures its device's memory (None off a GPU)."""
        size: int | None = self._call(lambda _: ("measure_batch_limit", limit))
        return size

    def start_decoding(self, sink: DecodeSink) -> StepDecoding:
        """``batching.mode: continuous``: the child's decode loop, reached through its decode pipe."""
        if not self._decode_slots:
            raise ValueError("this model process was not started for continuous decoding (batching.mode)")
        decoding = ProcessDecoding(
            sink,
            slots=self._decode_slots,
            watchdog=self._watchdog,
            unavailable=self._unavailable,
            died=ModelProcessDied,
        )
        self._decoding = decoding
        decoding.attach(self._child.decode_conn if self._up else None)
        return decoding

    def caption_batch(self, jobs: Sequence[CaptionJob]) -> list[list[Caption]]:
        if not jobs:
            return []
        pixels = [job.pixel_values for job in jobs]
        counts = [job.num_captions for job in jobs]
        result: list[list[Caption]] = self._call(lambda child: _batch_message(child, pixels, counts), watched=True)
        return result

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the child, letting it finish the batch it is on for up to ``timeout_s``; idempotent."""
        self._closing.set()  # first: the supervisor must not respawn what we stop
        spawning = self._spawning
        if spawning is not None:  # a respawn still loading: its load ends at once (EOF)
            spawning.process.kill()
        acquired = self._lock.acquire(timeout=timeout_s)
        try:
            if self._stopped:
                return
            self._stopped = True
            child = self._child
            if acquired:
                with contextlib.suppress(OSError, ValueError):  # already gone: nothing to stop
                    child.conn.send(("stop",))
                child.process.join(timeout_s)
        finally:
            if acquired:
                self._lock.release()
        _kill(child, timeout_s)  # a batch still running after timeout_s, or a child that won't stop
        if self._supervisor.is_alive() and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout_s)

    # -- calls -------------------------------------------------------------------------------------

    def _call(self, message_for: Callable[[_Child], tuple[Any, ...]], *, watched: bool = False) -> Any:
        """Send the child ``message_for(child)`` (built under the lock: a batch writes the child's slab) and wait;
        ``watched``: a batch, timed by the watchdog (warm-ups and measurements are not: they may compile)."""
        if not self._up and not self._closing.is_set():
            raise self._unavailable()  # fail fast: no waiting behind the lock for a child that isn't there
        with self._lock:
            if self._closing.is_set():
                raise ModelProcessError("the model process has been stopped")
            if not self._up:
                raise self._unavailable()
            child = self._child
            message = message_for(child)
            batch = self._watchdog.started() if watched else 0
            try:
                try:
                    child.conn.send(message)
                except (OSError, ValueError) as exc:  # the child is dead and the batch never reached it
                    raise self._unavailable() from exc
                return _receive(child, message[0])
            finally:
                if watched:
                    self._watchdog.ended(batch)

    def _unavailable(self) -> ModelUnavailable:
        retry_in_s = max(1.0, self._retry_at - time.monotonic())
        return ModelUnavailable("the model process is restarting, retry later", retry_after_s=retry_in_s)

    # -- the child's life ----------------------------------------------------------------------------

    def _spawn(self) -> tuple[_Child, dict[str, Any]]:
        """Start a child and wait for its model to load; kills it and raises ``ModelProcessError`` if it can't."""
        parent_end, child_end = self._context.Pipe()
        decode_parent = decode_child = None
        if self._decode_slots:
            decode_parent, decode_child = self._context.Pipe()
        process = self._context.Process(
            target=child_main,
            args=(child_end, *self._child_args, decode_child),
            name="captioner-model",
            daemon=True,  # never outlives the server
        )
        start_without_main(process)
        child_end.close()
        if decode_child is not None:
            decode_child.close()
        child = _Child(process, parent_end, time.monotonic(), decode_conn=decode_parent)
        self._spawning = child
        try:
            if self._closing.is_set():
                raise ModelProcessError("the model process has been stopped")
            if not parent_end.poll(self._start_timeout_s):
                raise ModelProcessError(f"the model process did not start within {self._start_timeout_s:.0f} s")
            info: dict[str, Any] = _receive(child, "load")
        except BaseException:
            _kill(child, 10.0)
            raise
        finally:
            self._spawning = None
        return child, info

    def _spawn_warm(self) -> _Child:
        child, _ = self._spawn()
        self._spawning = child  # close() ends the warm-up too
        try:
            if self._closing.is_set():
                raise ModelProcessError("the model process has been stopped")
            child.conn.send(("warm_up",))
            if not child.conn.poll(self._start_timeout_s):
                raise ModelProcessError("the respawned model process did not warm up in time")
            _receive(child, "warm_up")
        except BaseException:
            _kill(child, 10.0)
            raise
        finally:
            self._spawning = None
        return child

    def _supervise(self) -> None:
        delay = 0.0
        while not self._closing.is_set():
            child = self._child
            wait([child.process.sentinel], timeout=_SUPERVISOR_TICK_S)
            if self._closing.is_set():
                continue
            if child.process.is_alive():
                if not self._check_progress(child):
                    return
                continue
            self._up = False
            child.process.join(1.0)
            lived_s = time.monotonic() - child.started
            delay = self._backoff_min_s if not delay or lived_s >= _STABLE_S else min(delay * 2, self._backoff_max_s)
            reason = self._killed_because or f"the model process died ({_describe_exit(child.process.exitcode)})"
            self._killed_because = None
            logger.error("%s after %.0f s; respawning it in %.1f s", reason, lived_s, delay)
            self._retry_at = time.monotonic() + delay
            self._notify("model_down", reason, delay)
            if not self._respawn(delay):
                return

    def _check_progress(self, child: _Child) -> bool:
        """The watchdog: a batch in flight for ``health.watchdog_s`` means a stuck process (kill -STOP, a hang).
        Out of /readyz first, then SIGKILL (a stopped process ignores anything gentler); the death is then handled
        as any other (its batch fails with ``ModelProcessDied``, the child is respawned after the backoff).
        False when even SIGKILL can't end it (stuck in the kernel, a wedged driver): the replica must restart."""
        stall = self._watchdog.stall()
        if stall is None or self._killed_because is not None:
            return True  # nothing stuck, or killed already (dying: the death is handled on the next tick)
        reason = (f"the watchdog killed the model process: a batch in flight for {stall.seconds:.0f} s without an "
                  f"answer (health.watchdog_s)")  # fmt: skip
        # Not under self._lock: the stuck batch's call holds it.
        if not self._watchdog.still_in_flight(stall.batch) or child is not self._child:
            return True  # it answered meanwhile
        self._up = False
        self._killed_because = reason
        logger.error("%s; pid %s, respawning it", reason, child.process.pid)
        self._notify("model_stalled", reason, self._backoff_min_s)
        child.process.kill()
        child.process.join(10.0)  # reaped before the supervisor looks again: it sees a death, not a live process
        if child.process.is_alive():
            failed = f"the stuck model process (pid {child.process.pid}) survived SIGKILL for 10 s"
            logger.error("%s; this replica must be restarted", failed)
            self._notify("model_failed", failed)
            return False
        return True

    def _respawn(self, delay: float) -> bool:
        """Start a child to replace the dead one, retrying with backoff; False when it is time to stop."""
        failed_starts = 0
        while not self._closing.wait(delay):
            try:
                new = self._spawn_warm()
            except (ModelProcessError, OSError, ValueError) as exc:
                failed_starts += 1
                if failed_starts >= _MAX_FAILED_STARTS:
                    reason = f"the model process could not be restarted ({failed_starts} tries): {exc}"
                    logger.error("%s; this replica must be restarted", reason)
                    self._notify("model_failed", reason)
                    return False
                delay = min(delay * 2, self._backoff_max_s)
                logger.error("respawning the model process failed (%s); next try in %.1f s", exc, delay)
                self._retry_at = time.monotonic() + delay
                continue
            with self._lock:
                if self._closing.is_set():
                    _kill(new, 10.0)
                    return False
                old, self._child, self._up = self._child, new, True
            if self._decoding is not None:
                self._decoding.attach(new.decode_conn)
            old.conn.close()
            if old.decode_conn is not None:
                old.decode_conn.close()
            self.respawns += 1
            logger.warning("model process respawned and warmed up (pid %s)", new.process.pid)
            self._notify("model_up")
            return True
        return False

    def _notify(self, event: str, *args: Any) -> None:
        listener = self._listener
        if listener is None:
            return
        try:
            getattr(listener, event)(*args)
        except Exception:  # pragma: no cover - a listener bug must not stop the supervisor
            logger.exception("model listener failed on %s", event)


def _batch_message(child: _Child, pixels: Sequence[torch.Tensor], counts: list[int]) -> tuple[Any, ...]:
    """("batch", n, counts, new slab or None), the n images stacked into the first n rows of the child's slab.

    A child gets a slab with its first batch, and a bigger one (rows rounded up to a power of two) when a batch
    outgrows it; from then on only the message's few bytes cross.
    """
    n, image_shape = len(pixels), tuple(pixels[0].shape)
    slab, handed = child.slab, None
    if slab is None or tuple(slab.shape[1:]) != image_shape or slab.shape[0] < n or slab.dtype != pixels[0].dtype:
        rows = 1 << (n - 1).bit_length()
        slab = handed = child.slab = torch.empty((rows, *image_shape), dtype=pixels[0].dtype)
        slab.share_memory_()  # type: ignore[no-untyped-call]
    torch.stack(list(pixels), out=slab[:n])
    return ("batch", n, counts, handed)


def _receive(child: _Child, what: str) -> Any:
    try:
        status, payload, detail = child.conn.recv()
    except (EOFError, OSError) as exc:
        child.process.join(1.0)
        code = child.process.exitcode
        raise ModelProcessDied(f"the model process died during {what} ({_describe_exit(code)})") from exc
    if status == "error":
        logger.error("the model process failed %s: %s\n%s", what, payload, detail)
        raise ModelProcessError(payload)
    return payload


def _kill(child: _Child, timeout_s: float) -> None:
    if child.process.is_alive():
        child.process.kill()
        child.process.join(timeout_s)
    child.conn.close()
    if child.decode_conn is not None:
        child.decode_conn.close()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    if code == EXIT_DEVICE_ERROR:
        return f"exit code {code}: a device error made its CUDA context unusable"
    return f"exit code {code}"
