"""``batching.mode: continuous`` with ``model.worker: thread``: the decode loop on a thread of the server."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence

from captioner.errors import ModelError
from captioner.model.decode_engine import Answer, DecodeEngine, StepModel
from captioner.model.decode_loop import Message, join_message, leave_message, run_decode_loop
from captioner.model.protocol import CaptionJob, DecodeProgress, DecodeSink

logger = logging.getLogger("captioner.decode")


def deliver(sink: DecodeSink, answers: list[Answer], progress: DecodeProgress | None) -> None:
    """The loop's answers to the sink (which must not raise; if it does, the loop must still go on)."""
    try:
        if progress is not None:
            sink.progress(progress)
        for answer in answers:
            if answer.captions is not None:
                sink.finished(answer.request_id, answer.captions, answer.first_token_s)
            else:
                sink.failed(answer.request_id, answer.error or ModelError())
    except Exception:  # pragma: no cover - a sink bug
        logger.exception("continuous decoding: delivering answers failed")


class ThreadDecoding:
    """The ``StepDecoding`` of a ``StepModel`` in this process."""

    def __init__(self, captioner: StepModel, sink: DecodeSink) -> None:
        self._inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._engine = DecodeEngine(captioner)
        self._sink = sink
        self._stopped: BaseException | None = None  # why the loop ended (a fatal device error)
        self._thread = threading.Thread(target=self._run, name="captioner-decode", daemon=True)
        self._thread.start()

    def join(self, request_id: int, job: CaptionJob) -> None:
        if self._stopped is not None:
            self._sink.failed(request_id, self._stopped)
            return
        self._inbox.put(join_message(request_id, job))

    def leave(self, request_id: int) -> None:
        self._inbox.put(leave_message(request_id))

    def close(self) -> None:
        self._inbox.put(("stop",))
        if self._thread is not threading.current_thread():
            self._thread.join(30.0)

    def _take(self, wait: bool) -> Sequence[Message] | None:
        messages: list[Message] = []
        if wait:
            messages.append(self._inbox.get())
        while True:
            try:
                messages.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        if any(m[0] == "stop" for m in messages):
            return None
        return messages

    def _run(self) -> None:
        try:
            run_decode_loop(self._engine, self._take, lambda answers, p: deliver(self._sink, answers, p))
        except BaseException as exc:  # a fatal device error: nothing more can run on this device in this process
            logger.exception("continuous decoding stopped")
            self._stopped = exc
            deliver(self._sink, self._engine.fail_all(exc), None)
