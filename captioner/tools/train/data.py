"""Training data for ``captioner train``: COCO captions (or a Karpathy split) -> lazily read images -> BLIP's
captioning batches.

- ``CaptionDataset`` holds only (path, caption) pairs: each item reads its file from disk when the DataLoader
  (in its worker processes) asks for it, so a set of any size streams and is never held in memory.
- Pixels go through the server's own ``ImagePreprocessor`` (decode, EXIF orientation, resize, normalise): the
  model is trained on exactly the tensors it will be served, with no training/serving skew.
- ``CaptionCollator`` builds BLIP's captioning objective: the prompt ("a picture of ") is prefixed to each
  caption, the first token is the decoder's BOS ([DEC]), and the prompt and padding are masked out of the labels
  (-100) so the loss covers the caption words and the closing [SEP] only.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from captioner.model.preprocessing import ImagePreprocessor
from captioner.tools.eval.annotations import EvalImage
from captioner.tools.eval.references import References

IGNORE_INDEX = -100  # what torch's CrossEntropyLoss (and BLIP's LM head) leaves out of the loss
# BLIP's own fine-tuning caps captions at 30 words (pre_caption's max_words); 64 tokens leave room for sub-words.
MAX_CAPTION_WORDS = 30
MAX_TOKENS = 64
_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")


def clean_caption(caption: str) -> str:
    """BLIP's ``pre_caption``: lower case, no sentence punctuation, single spaces, at most 30 words.

    COCO references end in full stops and vary in case; the served model should not learn to say "." at all.
    """
    words = _PUNCTUATION.sub(" ", caption.lower()).split()
    return " ".join(words[:MAX_CAPTION_WORDS])


@dataclass(frozen=True)
class CaptionSet:
    """A COCO captions file, or a Karpathy split, resolved against its image folder."""

    images: list[EvalImage]
    image_dir: Path
    notes: list[str]

    @classmethod
    def load(cls, annotations: Path | References, image_dir: Path) -> CaptionSet:
        """``annotations``: a COCO captions file, or ``References`` (that or a Karpathy split file's split)."""
        source = annotations if isinstance(annotations, References) else References(annotations)
        images, notes = source.load()  # the same readers as `captioner eval`
        return cls(images, image_dir, notes)

    def pairs(self) -> list[tuple[str, str]]:
        """One (image path, caption) per reference, as BLIP trains: an image comes round once per caption."""
        return [(str(self.image_dir / i.file_name), ref) for i in self.images for ref in i.references]

    @property
    def num_captions(self) -> int:
        return sum(len(i.references) for i in self.images)


def read_pixels(preprocessor: ImagePreprocessor, path: str) -> torch.Tensor:
    """One image file -> the model's input tensor, through the serving code path."""
    image, _ = preprocessor.decode(Path(path).read_bytes())
    return preprocessor.prepare_pil(image)


class CaptionDataset(Dataset[dict[str, Any]]):
    """(image, caption) pairs; each image is read from disk only when its item is asked for."""

    def __init__(self, pairs: Sequence[tuple[str, str]], preprocessor: ImagePreprocessor) -> None:
        self.pairs = list(pairs)
        self.preprocessor = preprocessor

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, caption = self.pairs[index]
        return {"pixel_values": read_pixels(self.preprocessor, path), "caption": caption}


class ImageDataset(Dataset[dict[str, Any]]):
    """Images alone (for captioning a validation set), read lazily like ``CaptionDataset``."""

    def __init__(self, items: Sequence[tuple[Hashable, str]], preprocessor: ImagePreprocessor) -> None:
        self.items = list(items)
        self.preprocessor = preprocessor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id, path = self.items[index]
        return {"pixel_values": read_pixels(self.preprocessor, path), "image_id": image_id}


def collate_images(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "image_ids": [item["image_id"] for item in items],
    }


class CaptionCollator:
    """Items of ``CaptionDataset`` -> ``pixel_values``, ``input_ids``, ``attention_mask`` and ``labels``."""

    def __init__(self, tokenizer: Any, prompt: str, bos_token_id: int) -> None:
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.bos_token_id = bos_token_id
        # [CLS] (then replaced by [DEC]) and the prompt's words; its closing [SEP] is not part of the prefix.
        self.prompt_length = len(tokenizer(prompt)["input_ids"]) - 1

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [self.prompt + clean_caption(item["caption"]) for item in items]
        encoded = self.tokenizer(texts, padding="longest", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        input_ids: torch.Tensor = encoded["input_ids"]
        attention_mask: torch.Tensor = encoded["attention_mask"]
        # BLIP decodes from [DEC], not [CLS]; its generate() makes the same swap on the prompt.
        input_ids[:, 0] = self.bos_token_id
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        labels[:, : self.prompt_length] = IGNORE_INDEX
        return {
            "pixel_values": torch.stack([item["pixel_values"] for item in items]),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
        }
