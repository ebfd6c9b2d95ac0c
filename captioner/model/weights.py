"""Getting model weights onto local disk: use ``model.path`` if it holds a model, else download ``model.name``."""

from __future__ import annotations

import logging
from pathlib import Path

from captioner.config import ModelSettings

logger = logging.getLogger("captioner.weights")


class WeightsUnavailable(RuntimeError):
    """No weights on disk and none could be downloaded; the message says what to do."""


def has_weights(path: Path) -> bool:
    return (path / "config.json").is_file() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin")))


def ensure_weights(model: ModelSettings) -> Path:
    """Return a folder holding the model, downloading it from the model hub into ``model.path`` if needed."""
    path = Path(model.path)
    if has_weights(path):
        return path
    logger.info("no weights in %s; downloading %s@%s from the model hub", path, model.name, model.revision)
    try:
        from huggingface_hub import snapshot_download  # only when weights are missing

        snapshot_download(
            repo_id=model.name,
            revision=model.revision,
            local_dir=str(path),
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"],
        )
    except Exception as exc:
        raise WeightsUnavailable(
            f"model: no weights in {path} and downloading {model.name} failed ({type(exc).__name__}). "
            f"Copy a BLIP checkpoint into {path}, point model.path (or CAPTIONER_MODEL__PATH) at one, "
            f"or for a test model run: captioner init-model --size tiny --out weights/tiny "
            f"&& CAPTIONER_MODEL__PATH=weights/tiny captioner serve"
        ) from exc
    if not has_weights(path):
        raise WeightsUnavailable(f"model: downloaded {model.name} into {path} but found no safetensors weights there")
    return path


# Written by `captioner init-model` beside the weights: the server warns that such a model's captions mean nothing.
UNTRAINED_MARKER = "UNTRAINED"


def is_untrained(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` holds the ``UNTRAINED`` marker that ``captioner init-model`` writes."""
    return (Path(model_dir) / UNTRAINED_MARKER).is_file()
