"""COCO captions files: the images of a set and their reference captions, as ``captioner eval`` and ``train`` read them.

The format is COCO's captions JSON: ``images`` (each with ``id`` and ``file_name``, relative to the image
folder) and ``annotations`` (each with ``image_id`` and ``caption``). ``karpathy`` reads the other common
format, Karpathy's split files, into the same ``EvalImage`` list.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class AnnotationsError(ValueError):
    """The annotations file is not usable COCO captions JSON; the message says where."""


@dataclass(frozen=True)
class EvalImage:
    image_id: Hashable
    file_name: str
    references: tuple[str, ...]


def load_annotations(path: Path) -> tuple[list[EvalImage], list[str]]:
    """The images that have references, and notes about anything left out."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AnnotationsError(f"--annotations {path}: cannot read it ({exc.strerror})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationsError(f"--annotations {path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise AnnotationsError(f"--annotations {path}: expected COCO captions JSON with an 'images' list")
    if not isinstance(data.get("annotations"), list):
        raise AnnotationsError(f"--annotations {path}: expected an 'annotations' list")
    files: dict[Hashable, str] = {}
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise AnnotationsError(f"--annotations {path}: images[{index}] needs 'id' and 'file_name'")
        files[_hashable(image["id"])] = image["file_name"]
    references: dict[Hashable, list[str]] = {}
    orphans = 0
    for index, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict) or not isinstance(annotation.get("caption"), str):
            raise AnnotationsError(f"--annotations {path}: annotations[{index}] needs 'image_id' and 'caption'")
        image_id = _hashable(annotation.get("image_id"))
        if image_id not in files:
            orphans += 1
            continue
        references.setdefault(image_id, []).append(annotation["caption"])
    notes = []
    if orphans:
        notes.append(f"{orphans} annotations name an image id that 'images' lacks; ignored")
    unreferenced = len(files) - len(references)
    if unreferenced:
        notes.append(f"{unreferenced} images have no reference caption; left out")
    images = [EvalImage(i, files[i], tuple(refs)) for i, refs in references.items()]
    return images, notes


def _hashable(value: Any) -> Hashable:
    if isinstance(value, int | str):
        return value
    raise AnnotationsError(f"image ids must be integers or strings, got {value!r}")
