"""Karpathy split files: one split of ``dataset_coco.json`` or ``dataset_flickr30k.json`` as an ``EvalImage`` list.

Most captioning results are published on Karpathy's splits (COCO: 113k train, 5k val, 5k test; Flickr30k: 29k,
1k, 1k), shipped as one JSON file per data set::

    {"dataset": "coco",
     "images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "split": "test",
                 "sentences": [{"raw": "A man with a red helmet on a small moped.", "tokens": [...]}, ...],
                 "imgid": 0, "cocoid": 391895}, ...]}

One split of it becomes exactly what a COCO captions file gives (``annotations.load_annotations``), so
``captioner eval`` and ``captioner train`` treat both alike:

- ``restval`` (COCO val2014 images in neither Karpathy's val nor his test) is part of ``train``, as in the
  papers that use these splits (BLIP among them);
- an image's file is ``filepath/filename`` under the image root (COCO: its folder, ``train2014`` or
  ``val2014``), or ``filename`` alone where there is no ``filepath`` (Flickr30k);
- its id is ``cocoid`` where there is one (COCO's own id, so reports line up with COCO's), else ``imgid``,
  else its file; its references are the sentences' ``raw`` text (``tokens`` joined where ``raw`` is missing).
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from captioner.tools.eval.annotations import AnnotationsError, EvalImage

SPLITS = ("train", "val", "test")
# The file's split names -> the split they belong to.
_SPLIT_OF = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def load_karpathy(path: Path, split: str) -> tuple[list[EvalImage], list[str]]:
    """The images of ``split`` that have sentences, and notes about anything left out or folded in."""
    if split not in SPLITS:
        raise AnnotationsError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    where = f"--karpathy {path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AnnotationsError(f"{where}: cannot read it ({exc.strerror})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationsError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise AnnotationsError(f"{where}: expected a Karpathy split file with an 'images' list")
    images: list[EvalImage] = []
    seen: set[Hashable] = set()
    restval = unreferenced = 0
    for index, entry in enumerate(data["images"]):
        own = _split_of(entry, f"{where}: images[{index}]")
        if own != split:
            continue
        image = _image(entry, f"{where}: images[{index}]")
        if image.image_id in seen:
            raise AnnotationsError(f"{where}: images[{index}]: image id {image.image_id!r} appears twice")
        seen.add(image.image_id)
        restval += entry["split"] == "restval"
        if not image.references:
            unreferenced += 1
            continue
        images.append(image)
    notes = []
    if restval:
        notes.append(f"{restval} 'restval' images counted as train")
    if unreferenced:
        notes.append(f"{unreferenced} images of split {split!r} have no sentence; left out")
    return images, notes


def _split_of(entry: Any, where: str) -> str:
    if not isinstance(entry, dict) or entry.get("split") not in _SPLIT_OF:
        shown = entry.get("split") if isinstance(entry, dict) else entry
        raise AnnotationsError(f"{where}: 'split' must be one of {', '.join(_SPLIT_OF)}, got {shown!r}")
    return _SPLIT_OF[entry["split"]]


def _image(entry: dict[str, Any], where: str) -> EvalImage:
    filename, filepath = entry.get("filename"), entry.get("filepath")
    if not isinstance(filename, str) or not filename or not (filepath is None or isinstance(filepath, str)):
        raise AnnotationsError(f"{where}: needs a 'filename' (and 'filepath', where there is one, a string)")
    file_name = f"{filepath}/{filename}" if filepath else filename
    sentences = entry.get("sentences", [])
    if not isinstance(sentences, list):
        raise AnnotationsError(f"{where}: 'sentences' must be a list")
    references = tuple(_text(sentence, f"{where}: sentences[{i}]") for i, sentence in enumerate(sentences))
    image_id = next((entry[key] for key in ("cocoid", "imgid") if key in entry), file_name)
    if not isinstance(image_id, int | str) or isinstance(image_id, bool):
        raise AnnotationsError(f"{where}: 'cocoid' and 'imgid' must be integers or strings, got {image_id!r}")
    return EvalImage(image_id, file_name, tuple(r for r in references if r))


def _text(sentence: Any, where: str) -> str:
    if isinstance(sentence, dict) and isinstance(sentence.get("raw"), str):
        return str(sentence["raw"]).strip()
    if isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
        return " ".join(str(token) for token in sentence["tokens"])
    raise AnnotationsError(f"{where}: needs 'raw' (or 'tokens')")
