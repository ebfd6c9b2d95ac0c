"""``batching.mode: continuous`` with ``model.worker: process``: the server's end of the model process's decode
pipe (decode_child.py is the child's).

The child owns the running set; this side sends joins and leaves and hands the answers to the sink. An image
crosses in a slot of a shared slab (as a static batch crosses in process_worker.py): the slab goes to the child
once, with the first join, and from then on a join is a few bytes. A slot is taken per request and given back
when its answer arrives or it leaves (the child copies an image out as soon as the join arrives, so a reused
slot can only ever be read for a request that already left).

A reader thread per child reads the answers. When the child dies, every request it held fails with
``ModelProcessDied`` (503 ``ModelLost`` for the caller); the supervisor respawns the child (process_worker.py)
and ``attach`` starts reading the new one. While the model is down, a join fails at once with
``ModelUnavailable``. The watchdog (``health.watchdog_s``) sees the child as stuck when it holds requests and has
sent nothing for that long (the loop reports at least every ``PROGRESS_EVERY_S`` while busy).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch

from captioner.model.protocol import CaptionJob, DecodeProgress, DecodeSink
from captioner.model.watchdog import BatchWatchdog

logger = logging.getLogger("captioner.model_process")


class DecodeProcessError(RuntimeError):
    """The model process failed a request (its message; the child's traceback is logged here)."""


@dataclass
class _Sent:
    slot: int
    conn: Connection  # the child it went to


class ProcessDecoding:
    """The ``StepDecoding`` of a ``ProcessCaptioner``."""

    def __init__(
        self,
        sink: DecodeSink,
        *,
        slots: int,
        watchdog: BatchWatchdog,
        unavailable: Callable[[], BaseException],
        died: Callable[[str], BaseException],
    ) -> None:
        self._sink = sink
        self._slots = slots
        self._watchdog = watchdog
        self._unavailable = unavailable
        self._died = died
        self._lock = threading.Lock()  # sending, the slots, the requests in flight
        self._conn: Connection | None = None
        self._slab: torch.Tensor | None = None
        self._slab_sent = False
        self._free: list[int] = []
        self._sent: dict[int, _Sent] = {}
        self._watched = 0  # the watchdog's number for the current stretch in flight
        self._closed = False

    def attach(self, conn: Connection | None) -> None:
        """A child to send to (a new one after a respawn: it gets the slab again); None while the model is down."""
        with self._lock:
            self._conn = conn
            self._slab_sent = False
        if conn is not None:
            threading.Thread(target=self._read, args=(conn,), name="captioner-decode-reader", daemon=True).start()

    def join(self, request_id: int, job: CaptionJob) -> None:
        error: BaseException | None = None
        with self._lock:
            conn = self._conn
            if conn is None or self._closed:
                error = self._unavailable()
            else:
                slot = self._take_slot(job.pixel_values)
                handed = None
                if not self._slab_sent:
                    handed, self._slab_sent = self._slab, True
                assert self._slab is not None
                self._slab[slot].copy_(job.pixel_values)
                try:
                    conn.send(("join", request_id, slot, job.num_captions, handed))
                except (OSError, ValueError):  # the child is gone; the supervisor will say so
                    self._free.append(slot)
                    error = self._unavailable()
                else:
                    self._sent[request_id] = _Sent(slot, conn)
                    if len(self._sent) == 1:
                        self._watched = self._watchdog.started()
        if error is not None:
            self._sink.failed(request_id, error)

    def leave(self, request_id: int) -> None:
        with self._lock:
            sent = self._sent.pop(request_id, None)
            if sent is None:
                return
            self._free.append(sent.slot)
            self._idle_check()
            with contextlib.suppress(OSError, ValueError):  # the child is gone, and the request with it
                sent.conn.send(("leave", request_id))

    def close(self) -> None:
        with self._lock:
            self._closed = True

    # -- internals (under the lock) -----------------------------------------------------------------

    def _take_slot(self, pixels: torch.Tensor) -> int:
        slab = self._slab
        if slab is None or tuple(slab.shape[1:]) != tuple(pixels.shape) or slab.dtype != pixels.dtype:
            if self._sent:  # a new image shape with requests in flight on the old slab: never in practice
                raise ValueError("continuous decoding: every image must have the model's input shape")
            slab = torch.empty((self._slots, *pixels.shape), dtype=pixels.dtype)
            slab.share_memory_()  # type: ignore[no-untyped-call]
            self._slab, self._slab_sent = slab, False
            self._free = list(range(self._slots - 1, -1, -1))
        if not self._free:
            raise ValueError("continuous decoding: more requests in flight than slots")
        return self._free.pop()

    def _idle_check(self) -> None:
        if not self._sent:
            self._watchdog.ended(self._watched)

    # -- the reader thread -----------------------------------------------------------------------------

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                message: Any = conn.recv()
            except (EOFError, OSError):
                self._child_gone(conn)
                return
            if message[0] == "answers":
                self._deliver(message[1], message[2])

    def _deliver(self, answers: list[Any], progress: tuple[int, int] | None) -> None:
        delivered = []
        with self._lock:
            for request_id, captions, error, first_token_s in answers:
                sent = self._sent.pop(request_id, None)
                if sent is None:
                    continue  # it left meanwhile
                self._free.append(sent.slot)
                delivered.append((request_id, captions, error, first_token_s))
            if self._sent:  # still busy: the child is alive, the watchdog starts over
                self._watchdog.ended(self._watched)
                self._watched = self._watchdog.started()
            else:
                self._idle_check()
        if progress is not None:
            self._sink.progress(DecodeProgress(rows=progress[0], steps=progress[1]))
        errors: dict[tuple[str, str], DecodeProcessError] = {}  # one failure of many requests: one error
        for request_id, captions, error, first_token_s in delivered:
            if error is None:
                self._sink.finished(request_id, captions, first_token_s)
                continue
            failure = errors.get(tuple(error))
            if failure is None:
                message, detail = error
                logger.error("the model process failed decoding: %s\n%s", message, detail)
                failure = errors[tuple(error)] = DecodeProcessError(message)
            self._sink.failed(request_id, failure)

    def _child_gone(self, conn: Connection) -> None:
        with self._lock:
            lost = [request_id for request_id, sent in self._sent.items() if sent.conn is conn]
            for request_id in lost:
                self._free.append(self._sent.pop(request_id).slot)
            if self._conn is conn:
                self._conn = None
            self._idle_check()
        for request_id in lost:
            self._sink.failed(request_id, self._died("the model process died while decoding"))
