"""The model process's side of ``model.worker: process`` (process_worker.py is the server's side).

``child_main`` loads BLIP, says what it loaded, then answers ``batch``, ``warm_up`` and ``measure_batch_limit``
requests one at a time until told to ``stop`` or the server goes away. Each answer is ``(status, payload,
traceback)``. An exception fails that request only, except a fatal device error (device_errors.py): the child
then answers and exits with ``EXIT_DEVICE_ERROR`` at once, since its CUDA context is unusable and only a new
process gets a new one.
"""

from __future__ import annotations

import signal
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

from captioner.config import GenerationSettings, ModelSettings
from captioner.model.child_control import ControlRequests


def child_main(
    conn: Connection,
    model_dir: str,
    model: ModelSettings,
    generation: GenerationSettings,
    max_pixels: int,
    decode_conn: Connection | None = None,
) -> None:
    """The child: load, say what was loaded, then answer batches until told to stop or the parent goes.
    With ``decode_conn`` (``batching.mode: continuous``) its main loop is the decode loop (decode_child.py)."""
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
    control = ControlRequests(captioner, conn)
    if decode_conn is not None:
        from captioner.model.decode_child import decode_main

        decode_main(captioner, control, decode_conn)
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the server is gone
        if message[0] == "stop":
            return
        control.answer(message)
