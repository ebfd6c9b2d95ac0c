"""The loop that owns a ``DecodeEngine``: between two decoding steps it takes what arrived (joins, leaves), then
steps; idle, it waits. The same loop runs on a thread of the server (decode_thread.py) or as the model process's
main loop (process_child.py); only how messages arrive and answers leave differs (``take`` and ``emit``).

Messages: ``("join", request_id, job)``, ``("leave", request_id)``; ``take`` returns None to stop (live requests
then fail). A failure while admitting fails the images being admitted; one while stepping fails every live
image (the running set is then empty and the loop goes on). A fatal device error is re-raised after the
answers are out: only a new process gets a new CUDA context (device_errors.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from captioner.errors import ModelError
from captioner.model.decode_engine import Answer, DecodeEngine, DecodeRequest
from captioner.model.device_errors import is_fatal_device_error
from captioner.model.protocol import CaptionJob, DecodeProgress

Message = tuple[Any, ...]
Take = Callable[[bool], Sequence[Message] | None]  # (wait while idle) -> messages, or None to stop
Emit = Callable[[list[Answer], DecodeProgress | None], None]

# How often the loop reports its rows and steps while busy without answering anyone (answers carry them too).
PROGRESS_EVERY_S = 0.5


def running_set_rows(max_batch_size: int, num_beams: int) -> int:
    """The running set's bound in rows (sequences): as many as a full static batch decodes (``max_batch_size``
    images at the configured beams), so continuous mode never holds more KV cache than static mode would."""
    return max_batch_size * num_beams


def join_message(request_id: int, job: CaptionJob) -> Message:
    return ("join", request_id, job)


def leave_message(request_id: int) -> Message:
    return ("leave", request_id)


def run_decode_loop(engine: DecodeEngine, take: Take, emit: Emit) -> None:
    reported = time.monotonic()
    while True:
        messages = take(engine.idle)
        if messages is None:
            emit(engine.fail_all(ModelError("the model stopped decoding")), _progress(engine))
            return
        leaving = {m[1] for m in messages if m[0] == "leave"}
        joining = [DecodeRequest(m[1], m[2]) for m in messages if m[0] == "join" and m[1] not in leaving]
        if leaving:
            engine.leave(leaving)
        was_idle = engine.idle
        answers, fatal = _advance(engine, joining)
        now = time.monotonic()
        if answers or fatal is not None or engine.idle != was_idle or now - reported >= PROGRESS_EVERY_S:
            emit(answers, _progress(engine))
            reported = now
        if fatal is not None:
            raise fatal


def _advance(engine: DecodeEngine, joining: list[DecodeRequest]) -> tuple[list[Answer], BaseException | None]:
    answers: list[Answer] = []
    try:
        answers += engine.admit(joining)
    except Exception as exc:
        engine.leave({r.request_id for r in joining})
        answers += [Answer(r.request_id, error=exc) for r in joining]
        if is_fatal_device_error(exc):
            return answers + engine.fail_all(exc), exc
    if engine.idle:
        return answers, None
    try:
        answers += engine.step()
    except Exception as exc:
        answers += engine.fail_all(exc)
        if is_fatal_device_error(exc):
            return answers, exc
    return answers, None


def _progress(engine: DecodeEngine) -> DecodeProgress:
    return DecodeProgress(rows=engine.rows, steps=engine.steps)
