"""``load_captioner``: the one way to get a model from the settings, for the server, the tools and the benchmarks.

It fetches the weights when ``model.path`` holds none (``weights.ensure_weights``), then loads BLIP on a
thread of this process or, with ``model.worker: process``, in a child process of its own.
"""

from __future__ import annotations

from captioner.config import Settings
from captioner.model.protocol import Captioner
from captioner.model.weights import ensure_weights


def load_captioner(settings: Settings) -> Captioner:
    # torch and transformers load here, not at import: `captioner --help` and the HTTP layer's imports stay light.
    from captioner.model.blip import BlipCaptioner
    from captioner.model.decode_loop import running_set_rows

    path = ensure_weights(settings.model)
    if settings.model.worker == "process":
        from captioner.model.process_worker import ProcessCaptioner

        batching = settings.batching
        continuous = batching.mode == "continuous"
        return ProcessCaptioner(
            path,
            settings.model,
            settings.generation,
            settings.limits.max_pixels,
            health=settings.health,
            # A request holds at least one row: the running set's bound in rows bounds the requests in flight.
            decode_slots=running_set_rows(batching.max_batch_size, settings.generation.num_beams) if continuous else 0,
        )
    return BlipCaptioner(path, settings.model, settings.generation, settings.limits.max_pixels)
