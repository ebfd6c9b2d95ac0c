"""The tiny model and the settings that serve it; registry-shaped folders that hold no model at all.

The tiny model is an untrained BLIP with the real architecture (``captioner init-model --size tiny``): its
captions are meaningless but real. It is written once per test run: the ``tiny_model_dir`` fixture
(tests/conftest.py) calls ``shared_tiny_model`` under a file lock, so xdist's workers share one copy.
"""

from __future__ import annotations

import fcntl
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captioner.config import Settings, load_settings

if TYPE_CHECKING:
    from captioner.model.blip import BlipCaptioner

MODEL_NAME = "test/tiny-blip"  # what the tiny model calls itself in answers (model.name)
UNLOADED = Path("/nonexistent/tiny-blip")  # model.path for settings under test that never load a model
_DONE = ".complete"


def shared_tiny_model(folder: Path) -> Path:
    """``folder``, holding the tiny model: written by the first caller, under a lock the others wait on."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / (folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / _DONE).exists():
            from captioner.tools.init_model import write_untrained_model

            write_untrained_model(folder, size="tiny", seed=0)
            (folder / _DONE).touch()
    return folder


def tiny_settings(model_dir: Path | None = None, **sections: dict[str, Any]) -> Settings:
    """The tiny model's settings (``model_dir``; a path that holds nothing when the test loads no model).

    On the CPU even where there is a GPU: tests compare against CPU references and assert ``device == "cpu"``.
    A test about GPU behaviour sets the device itself and is marked ``gpu``.
    """
    settings = load_settings(None, {})
    # The model on a thread of the test process: an in-process server then starts in a second, not the child's
    # several (the default process worker has tests of its own, and every system test runs it).
    settings = settings.replace(
        "model", path=str(model_dir or UNLOADED), name=MODEL_NAME, device="cpu", worker="thread"
    )
    settings = settings.replace("server", preprocess_workers=2)
    # Ratings a test posts go to a folder of their own (under the run's temp folder), never the working directory.
    settings = settings.replace("feedback", path=tempfile.mkdtemp(prefix="captioner-feedback-"))
    for section, values in sections.items():
        settings = settings.replace(section, **values)
    return settings


def tiny_blip(model_dir: Path, **model: object) -> BlipCaptioner:
    """The tiny BLIP loaded in this process, with some ``model.*`` options changed."""
    from captioner.model.blip import BlipCaptioner

    settings = tiny_settings(model_dir).replace("model", **model)
    return BlipCaptioner(model_dir, settings.model, settings.generation, settings.limits.max_pixels)


def fake_model(folder: Path, seed: int = 0, card: dict[str, object] | None = None) -> Path:
    """A folder that looks like a model to the registry (it never loads one): config + weights bytes."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "blip", "seed": seed}))
    (folder / "model.safetensors").write_bytes(bytes([seed]) * 64)
    (folder / "checkpoints").mkdir()  # a training run's leftovers: not copied
    (folder / "checkpoints" / "big.bin").write_bytes(b"x" * 10)
    if card is not None:
        (folder / "training.json").write_text(json.dumps(card))
    return folder


def annotated_by(model_dir: Path, out: Path, count: int = 6) -> Path:
    """A COCO captions file over ``count`` photos in ``out``, whose references are the captions ``model_dir`` gives
    them (in this process): that model scores high on it, any other low. Returns the annotations file."""
    from tests.support.images import photo

    out.mkdir(parents=True, exist_ok=True)
    return write_self_annotated(tiny_blip(model_dir), [photo(700 + i) for i in range(count)], out)


def write_self_annotated(model: Any, images: list[bytes], out: Path) -> Path:
    """``images`` as ``out/<n>.png`` and ``out/captions.json``, each image's reference the top caption ``model`` (a
    loaded captioner) gives it. Returns the annotations file."""
    from captioner.model.protocol import CaptionJob

    captions = model.caption_batch([CaptionJob(model.preprocess(data).pixel_values) for data in images])
    document: dict[str, list[dict[str, Any]]] = {"images": [], "annotations": []}
    for index, (data, found) in enumerate(zip(images, captions, strict=True)):
        (out / f"{index}.png").write_bytes(data)
        document["images"].append({"id": index, "file_name": f"{index}.png"})
        document["annotations"].append({"id": index, "image_id": index, "caption": found[0].text})
    annotations = out / "captions.json"
    annotations.write_text(json.dumps(document))
    return annotations
