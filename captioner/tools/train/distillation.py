"""Sequence-level knowledge distillation for ``captioner train --teacher DIR`` (Kim and Rush, 2016).

The teacher's beam-search captions of the training images are the student's targets: the student learns to say
what the teacher says, which is easier to fit than the spread of human references and needs no labels at all.

- Labelling is ``captioner data label``'s own code (``label.label_folder``): every image under ``--images`` is
  captioned by the teacher, batched, with the config's generation settings (beams, length limits), and its
  ``--teacher-captions`` most confident captions (default 1, the beam's best, as in the paper) become its
  references. The labels are written to ``OUT/teacher-captions.json`` (COCO captions format) before training, so
  the exact targets stay beside the model and the card records their hash.
- Mixing (``mix_references``): with ``--annotations`` or ``--karpathy`` as well, each image trains on all of
  both: the teacher's captions and every human reference it has. Each (image, caption) pair is one example, so
  an image with five human references and one teacher caption comes round six times per epoch; images only the
  teacher captioned train on its captions alone, and annotated images the teacher could not caption keep their
  human references.
- The teacher is loaded, used and closed before the student is built: the two are never in memory together.
  Under ``torchrun`` every process labels the images itself; label once with ``captioner data label`` and
  train on that file with ``--annotations`` when that matters.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from captioner.config import Settings
from captioner.errors import CaptionerError
from captioner.tools.caption.backends import BackendUnavailable
from captioner.tools.eval.annotations import EvalImage
from captioner.tools.label import LabelError, label_folder, write_labels

TEACHER_CAPTIONS = "teacher-captions.json"  # in OUT: the targets the student was trained on


class DistillationError(ValueError):
    """The teacher could not label the images (no model there, no images): one line for the operator."""


@dataclass(frozen=True)
class TeacherLabels:
    """What the teacher said about the training images, and where it is written."""

    teacher: Path
    file: Path
    images: list[EvalImage]
    captions_per_image: int
    num_failed: int


def mix_references(teacher: Sequence[EvalImage], human: Sequence[EvalImage]) -> list[EvalImage]:
    """Per image (by file name), the human references followed by the teacher's captions not already among them.

    Images come in the teacher's order (the folder search's), then human-annotated images the teacher did not
    caption. Each image is named by its file name: the two files' ids are unrelated numbers.
    """
    human_by_file = {image.file_name: image.references for image in human}
    mixed: list[EvalImage] = []
    for image in teacher:
        references = human_by_file.pop(image.file_name, ())
        extra = tuple(caption for caption in image.references if caption not in references)
        mixed.append(EvalImage(image.file_name, image.file_name, references + extra))
    mixed.extend(EvalImage(name, name, references) for name, references in human_by_file.items() if references)
    return mixed


def label_with_teacher(
    settings: Settings, teacher: Path, images: Path, out_file: Path, *, captions_per_image: int, batch_size: int
) -> TeacherLabels:
    """Caption every image under ``images`` with ``teacher`` and write the labels to ``out_file``."""
    try:
        labels = asyncio.run(
            label_folder(
                settings,
                teacher,
                images,
                num_captions=captions_per_image,
                batch_size=batch_size,
                on_failure=lambda f: print(f"teacher failed on {f.path}: {f.code}: {f.message}", file=sys.stderr),
            )
        )
    except LabelError as exc:
        raise DistillationError(str(exc).replace("--model", "--teacher")) from exc
    except (BackendUnavailable, CaptionerError) as exc:
        raise DistillationError(f"--teacher {teacher}: {exc}") from exc
    if not labels.num_images:
        raise DistillationError(f"--teacher {teacher}: it could caption none of the images in {images}")
    write_labels(labels, out_file)
    by_id: dict[int, list[str]] = {}
    for annotation in labels.document["annotations"]:
        by_id.setdefault(annotation["image_id"], []).append(annotation["caption"])
    captioned = [
        EvalImage(image["file_name"], image["file_name"], tuple(by_id[image["id"]]))
        for image in labels.document["images"]
    ]
    return TeacherLabels(teacher, out_file, captioned, captions_per_image, len(labels.failures))
