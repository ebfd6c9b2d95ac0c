"""The hard style of ``captioner data synth --difficulty hard``: the same scenes, drawn so a small model errs.

A hard image shows exactly what its easy twin shows (shape, colour, count, size, background, position) and keeps
its captions, but a small model gets much of it wrong, as on real photographs:

- objects at ``SCALE`` of their easy extent (few patches of a small model's input cover them);
- the object's colour pulled part of the way toward the background (low contrast; still nearest its own hue);
- a gradient across the background and per-pixel noise on the whole image (no flat colour to subtract);
- a few neutral-grey strokes and dots behind the objects: clutter, but never an object colour, so a count or
  colour in the references stays true;
- a slight blur, as from a soft lens.

Everything here draws from its own RNG (``hard``), never from the scene's: the scene's RNG then gives the hard
image the same layout and the same captions as the easy one at that index.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Objects keep their centres and shrink by this much. Large stays larger than small: the largest small single
# object (0.34) becomes 0.22, the smallest large one (0.44) 0.29; in groups 0.17 against 0.18.
SCALE = 0.65
PULL = (0.3, 0.5)  # share of the way from the object's colour to the background's
GRADIENT = (12.0, 24.0)  # +- grey levels across the image, in a random direction
NOISE = 8.0  # standard deviation of the Gaussian noise per pixel and channel, in grey levels
BLUR = (0.5, 0.9)  # Gaussian blur radius, in output pixels
CLUTTER_MARKS = (2, 4)
# Clutter greys stay this far from the background's own grey level, so a mark is seen (and not as an object).
_CLUTTER_SEPARATION = 40
_CLUTTER_LEVELS = range(60, 201, 10)


def background(rgb: tuple[int, int, int], side: int, hard: random.Random) -> Image.Image:
    """A ``side`` x ``side`` background of colour ``rgb`` with a neutral linear gradient across it."""
    amplitude = hard.uniform(*GRADIENT)
    angle = hard.uniform(0.0, 2 * np.pi)
    axis = np.linspace(-1.0, 1.0, side)
    ramp = np.cos(angle) * axis[None, :] + np.sin(angle) * axis[:, None]  # -sqrt(2)..sqrt(2) along the angle
    shade = amplitude * ramp / np.sqrt(2)
    pixels = np.asarray(rgb, dtype=np.float64)[None, None, :] + shade[:, :, None]
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def draw_clutter(image: Image.Image, rgb: tuple[int, int, int], hard: random.Random) -> None:
    """A few grey strokes and dots, drawn before the objects so that they never cover one."""
    side = image.width
    level = sum(rgb) // 3
    greys = [v for v in _CLUTTER_LEVELS if abs(v - level) >= _CLUTTER_SEPARATION]
    draw = ImageDraw.Draw(image)
    for _ in range(hard.randint(*CLUTTER_MARKS)):
        grey = hard.choice(greys)
        x, y = hard.uniform(0.05, 0.95) * side, hard.uniform(0.05, 0.95) * side
        if hard.random() < 0.5:  # a short stroke, thinner than any object
            length, angle = hard.uniform(0.06, 0.16) * side, hard.uniform(0.0, 2 * np.pi)
            end = (x + length * np.cos(angle), y + length * np.sin(angle))
            draw.line([(x, y), end], fill=(grey, grey, grey), width=max(1, round(0.012 * side)))
        else:  # a dot, smaller than any object
            radius = hard.uniform(0.01, 0.025) * side
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(grey, grey, grey))


def pull(fill: tuple[int, int, int], toward: tuple[int, int, int], hard: random.Random) -> tuple[int, int, int]:
    """``fill`` moved part of the way to ``toward``: less contrast, the same hue."""
    share = hard.uniform(*PULL)
    r, g, b = (round(f + share * (t - f)) for f, t in zip(fill, toward, strict=True))
    return r, g, b


def degrade(image: Image.Image, hard: random.Random) -> Image.Image:
    """The finished image, blurred a little, with Gaussian noise on every pixel."""
    blurred = image.filter(ImageFilter.GaussianBlur(hard.uniform(*BLUR)))
    # numpy's generator, seeded from ours: a whole image of noise at once, the same for the same seed anywhere.
    noise = np.random.default_rng(hard.getrandbits(64)).normal(0.0, NOISE, (image.height, image.width, 3))
    pixels = np.asarray(blurred, dtype=np.float64) + noise
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
