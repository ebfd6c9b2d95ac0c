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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class JoinPolicy:
    """When images waiting to join are admitted while others decode.

    Every admission is a vision pass and a prompt step of its own, and a copy of the running set's KV cache: one
    image at a time halves the decoder's throughput at saturation (the tiny model, 16 live images: 145 against 320
    images/s joining eight at a time; docs/benchmarks.md). So while the set is busy, arrivals join in groups of
    ``min_images``, or after waiting ``max_wait_steps`` steps, whichever comes first; an idle set admits at once.
    """

    min_images: int = 4
    max_wait_steps: int = 4

    def admit_now(self, waiting: int, waited_steps: int, idle: bool) -> bool:
        return waiting > 0 and (idle or waiting >= self.min_images or waited_steps >= self.max_wait_steps)


IMMEDIATE = JoinPolicy(min_images=1, max_wait_steps=0)  # every arrival joins at the next step


def running_set_rows(max_batch_size: int, num_beams: int) -> int:
    """The running set's bound in rows (sequences): as many as a full static batch decodes (``max_batch_size``
    images at the configured beams), so continuous mode never holds more KV cache than static mode would."""
    return max_batch_size * num_beams


def join_message(request_id: int, job: CaptionJob) -> Message:
    return ("join", request_id, job)


def leave_message(request_id: int) -> Message:
    return ("leave", request_id)


def run_decode_loop(engine: DecodeEngine, take: Take, emit: Emit, policy: JoinPolicy = JoinPolicy()) -> None:
    reported = time.monotonic()
    waiting: list[DecodeRequest] = []  # arrived, not yet admitted (``policy``)
    waited = 0  # steps the oldest of them has waited
    while True:
        messages = take(engine.idle and not waiting)
        if messages is None:
            stopped = ModelError("the model stopped decoding")
            emit(engine.fail_all(stopped) + [Answer(r.request_id, error=stopped) for r in waiting], _progress(engine))
            return
        leaving = {m[1] for m in messages if m[0] == "leave"}
        arrived = [DecodeRequest(m[1], m[2]) for m in messages if m[0] == "join"]
        waiting = [r for r in waiting + arrived if r.request_id not in leaving]
        if leaving:
            engine.leave(leaving)
        joining: list[DecodeRequest] = []
        if policy.admit_now(len(waiting), waited, engine.idle):
            joining, waiting, waited = waiting, [], 0
        elif waiting:
            waited += 1
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
