"""The model process's answers to the server's ordinary requests (``batch``, ``warm_up``,
``measure_batch_limit``), each ``(status, payload, traceback)`` on the control pipe; shared by the static loop
(process_child.py) and the continuous one (decode_child.py)."""

from __future__ import annotations

import os
import traceback
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from captioner.model import heap
from captioner.model.device_errors import is_fatal_device_error
from captioner.model.protocol import CaptionJob

if TYPE_CHECKING:
    from captioner.model.blip import BlipCaptioner

# The exit status after a fatal device error (EX_SOFTWARE); the server's supervisor names it in its log.
EXIT_DEVICE_ERROR = 70


class ControlRequests:
    """The requests the server's ``_call`` makes (batch, warm_up, measure_batch_limit), each answered on ``conn``."""

    def __init__(self, captioner: BlipCaptioner, conn: Connection) -> None:
        self._captioner = captioner
        self.conn = conn
        self._slab: Any = None

    def answer(self, message: tuple[Any, ...]) -> None:
        captioner, conn = self._captioner, self.conn
        try:
            if message[0] == "batch":
                _, size, counts, handed = message
                if handed is not None:  # the parent's shared batch buffer, new or grown (process_worker.py)
                    self._slab = handed
                pixels = self._slab[:size]
                result: Any = captioner.caption_batch([CaptionJob(pixels[i], n) for i, n in enumerate(counts)])
            elif message[0] == "measure_batch_limit":  # batching.auto_batch_size, on the child's device
                result = captioner.measure_batch_limit(message[1])
            elif message[0] == "warm_up":
                captioner.warm_up()
                heap.settle()  # what the model left on the heap is here for good: out of the GC's way
                result = None
            else:
                raise ValueError(f"unknown request {message[0]!r}")
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
            if is_fatal_device_error(exc):
                os._exit(EXIT_DEVICE_ERROR)  # no clean-up: it would touch the broken context, and may hang
        else:
            conn.send(("ok", result, ""))
