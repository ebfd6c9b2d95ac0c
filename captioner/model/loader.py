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

    path = ensure_weights(settings.model)
    if settings.model.worker == "process":
        from captioner.model.process_worker import ProcessCaptioner

        return ProcessCaptioner(
            path, settings.model, settings.generation, settings.limits.max_pixels, health=settings.health
        )
    return BlipCaptioner(path, settings.model, settings.generation, settings.limits.max_pixels)
