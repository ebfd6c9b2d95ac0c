"""The model process's main loop under ``batching.mode: continuous``: the decode loop (decode_loop.py) owns the
running set; between two steps it reads both of its pipes.

- The decode pipe (process_decoding.py is the other end): ``("join", id, slot, num_captions, slab or None)``
  (the image waits in slot ``slot`` of a shared slab the parent handed over once; it is copied out on arrival,
  so the parent may reuse the slot as soon as the request is over for it), ``("leave", id)``. Answers go back
  as ``("answers", [(id, captions or None, error or None, first_token_s)], (rows, steps) or None)``.
- The control pipe: the server's ordinary requests (warm-up, the health probe's image, ``stop``), answered
  between two steps as in static mode (process_child.py).
A fatal device error ends the process once the answers are out (EXIT_DEVICE_ERROR): only a new process gets a
new CUDA context.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from captioner.model.child_control import EXIT_DEVICE_ERROR, ControlRequests
from captioner.model.decode_engine import Answer, DecodeEngine, StepModel
from captioner.model.decode_loop import Message, run_decode_loop
from captioner.model.protocol import CaptionJob, DecodeProgress


def decode_main(captioner: StepModel, control: ControlRequests, decode_conn: Connection) -> None:
    inbox = _Inbox(control, decode_conn)
    try:
        run_decode_loop(DecodeEngine(captioner), inbox.take, inbox.emit)
    except (BrokenPipeError, EOFError, ConnectionResetError):
        return  # the server is gone
    except Exception:
        os._exit(EXIT_DEVICE_ERROR)  # a fatal device error, its answers already sent: no clean-up may touch it


class _Inbox:
    def __init__(self, control: ControlRequests, decode_conn: Connection) -> None:
        self._control = control
        self._decode = decode_conn
        self._slab: Any = None

    def take(self, wait_while_idle: bool) -> Sequence[Message] | None:
        """What arrived on the decode pipe (control requests answered on the way); blocks only while idle and
        nothing has arrived yet. None: stop (told to, or the server is gone)."""
        messages: list[Message] = []
        block = wait_while_idle
        while True:
            ready = wait([self._control.conn, self._decode], None if block else 0)
            if not ready:
                return messages
            for ready_conn in ready:
                conn = self._decode if ready_conn is self._decode else self._control.conn
                try:
                    message: Any = conn.recv()
                except (EOFError, OSError):
                    return None
                if conn is self._decode:
                    messages.append(self._decoded(message))
                elif message[0] == "stop":
                    return None
                else:
                    self._control.answer(message)
            block = wait_while_idle and not messages

    def _decoded(self, message: tuple[Any, ...]) -> Message:
        if message[0] != "join":
            return message
        _, request_id, slot, num_captions, handed = message
        if handed is not None:
            self._slab = handed
        return ("join", request_id, CaptionJob(self._slab[slot].clone(), num_captions))

    def emit(self, answers: list[Answer], progress: DecodeProgress | None) -> None:
        sent = [
            (a.request_id, a.captions, None if a.error is None else _describe(a.error), a.first_token_s)
            for a in answers
        ]
        self._decode.send(("answers", sent, None if progress is None else (progress.rows, progress.steps)))


def _describe(error: BaseException) -> tuple[str, str]:
    return f"{type(error).__name__}: {error}", "".join(traceback.format_exception(error))
