"""What drift monitoring measures: per image (size, aspect, brightness, colourfulness, format, bytes) and per
caption (confidence, length, content words). ``psi.py`` compares their distributions."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageStat

INPUT_NUMERIC = ("width", "height", "aspect", "brightness", "colourfulness", "bytes")
OUTPUT_NUMERIC = ("confidence", "caption_length")
FEATURES = (*INPUT_NUMERIC, "format", *OUTPUT_NUMERIC, "vocabulary")
_THUMB = 64
_WORD = re.compile(r"[a-z0-9']+")
_STOPWORDS = frozenset(("a", "an", "the", "of", "on", "in", "at", "with", "and", "to", "is", "are", "its", "this"))


@dataclass(frozen=True)
class InputFeatures:
    width: int
    height: int
    aspect: float  # width / height
    brightness: float  # mean luma (ITU-R 601), 0..255
    colourfulness: float  # Hasler & Suesstrunk (2003); ~0 grey, ~100+ very colourful
    format: str
    bytes: int


@dataclass(frozen=True)
class OutputFeatures:
    confidence: float
    caption_length: int  # words
    words: tuple[str, ...]  # the words counted for the vocabulary (lower case)


def input_features(image: Image.Image, *, fmt: str, n_bytes: int, width: int, height: int) -> InputFeatures:
    """One image's features. The statistics use a sample of pixels (a nearest-neighbour copy at most 64 px on a
    side): an unbiased sample of the image's pixels, and a cost (~1 ms) that does not grow with the image."""
    w, h = image.size
    scale = min(1.0, _THUMB / max(w, h, 1))
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    small = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.NEAREST)
    brightness = float(ImageStat.Stat(small.convert("L")).mean[0])
    pixels = np.asarray(small, dtype=np.float64).reshape(-1, 3)
    rg = pixels[:, 0] - pixels[:, 1]
    yb = (pixels[:, 0] + pixels[:, 1]) / 2 - pixels[:, 2]
    colourfulness = math.hypot(float(rg.std()), float(yb.std())) + 0.3 * math.hypot(float(rg.mean()), float(yb.mean()))
    aspect = width / height if height > 0 else 0.0
    return InputFeatures(width, height, aspect, brightness, colourfulness, fmt.upper(), n_bytes)


def output_features(caption: str, confidence: float) -> OutputFeatures:
    """A caption's features: its length in words and its content words (common function words left out)."""
    words = _WORD.findall(caption.lower())
    return OutputFeatures(confidence, len(words), tuple(w for w in words if w not in _STOPWORDS))
