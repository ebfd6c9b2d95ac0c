"""``captioner data synth``: a synthetic captioning set that anyone can make offline, for tests and demos.

    captioner data synth --out data/synth-train --images 2000 --seed 1
    captioner data synth --out data/synth-val --images 200 --seed 2

Each image is a scene drawn with Pillow: one to three objects of one shape (circle, square, triangle) and one
colour (red, green, blue, yellow, purple), small or large, on a plain white, black or gray background; a single
object sits on the left, on the right, at the top, at the bottom or in the middle. Colours are jittered and edges
anti-aliased, so a model has to learn colour and shape categories rather than exact pixel values.

``DIR/captions.json`` is COCO captions format, exactly what ``captioner eval`` and ``captioner train`` read:
``images`` (``id``, ``file_name`` relative to DIR, ``width``, ``height``, plus a ``scene`` object with the truth
that tests check against) and ``annotations`` (``id``, ``image_id``, ``caption``), five differently worded
references per image. Every caption names the colour and the shape, so no caption is right for every image.
The vocabulary is small (about 40 words) so that even the ``init-model --size tiny`` model learns it in seconds.

``--difficulty hard`` draws the same scenes, with the same captions, so that a small model gets many of them
wrong (``synth_hard``: smaller objects, colours pulled toward the background, a gradient and noise, grey clutter,
a slight blur); ``mixed`` draws each image easy or hard by a coin of its own, and both record each image's
``difficulty`` in its entry, so scores can be split by it. The default, ``easy``, draws the plain scenes above.

The same ``--seed`` gives the same bytes; image ``i`` depends only on the seed and ``i``, not on ``--images``.
Image ``i`` shows the same scene, with the same captions, whatever the difficulty.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from captioner.tools import synth_hard
from captioner.tools.command_line import add_command

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (40, 75, 215),
    "yellow": (235, 215, 35),
    "purple": (135, 50, 175),
}
# None of them is an object colour, so "the odd pixels" are always the object.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (242, 242, 242),
    "black": (18, 18, 18),
    "gray": (125, 125, 125),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "middle": (0.5, 0.5),
}
_WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
_WHERE["middle"] = "in the middle"
_NUMBERS = {1: "one", 2: "two", 3: "three"}
_SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
# Object extent as a fraction of the image side: (min, max) for a single object, then for one of a group.
# Even a small one spans two patches of the tiny model (8 px patches of a 64 px input), so its shape can be seen.
_EXTENT = {"small": ((0.28, 0.34), (0.22, 0.26)), "large": ((0.44, 0.52), (0.28, 0.32))}
_COLOR_JITTER = 20
_SUPERSAMPLE = 2  # drawn at twice the size and downsampled: anti-aliased edges, as in a photo
REFERENCES_PER_IMAGE = 5
DIFFICULTIES = ("easy", "hard", "mixed")

# Caption templates: {n} count word, {c} colour, {s} shape (plural for groups), {z} size word, {b} background,
# {w} where a single object is. Each image gets REFERENCES_PER_IMAGE of them, so its references differ in wording.
_SINGLE = (
    "a {c} {s}",
    "a {z} {c} {s}",
    "a {c} {s} {w}",
    "a {z} {c} {s} on a {b} background",
    "one {c} {s} on a {b} background",
    "there is a {z} {c} {s} {w}",
    "a {b} background with a {c} {s} {w}",
)
_GROUP = (
    "{n} {c} {s}",
    "{n} {z} {c} {s}",
    "{n} {c} {s} on a {b} background",
    "there are {n} {c} {s}",
    "a group of {n} {c} {s}",
    "{n} {z} {c} {s} on a {b} background",
    "a {b} background with {n} {c} {s}",
)


@dataclass(frozen=True)
class Scene:
    """What an image shows: the truth its captions are written from."""

    shape: str
    color: str
    count: int
    size: str  # small | large
    background: str
    position: str | None  # where a single object is; None for a group


def random_scene(rng: random.Random) -> Scene:
    count = rng.choice((1, 1, 2, 3))  # half the scenes hold one object, so positions get enough examples
    return Scene(
        shape=rng.choice(SHAPES),
        color=rng.choice(list(COLORS)),
        count=count,
        size=rng.choice(("small", "large")),
        background=rng.choice(list(BACKGROUNDS)),
        position=rng.choice(list(POSITIONS)) if count == 1 else None,
    )


def captions_for(scene: Scene, rng: random.Random) -> list[str]:
    """REFERENCES_PER_IMAGE distinct captions of ``scene``, each naming its colour and shape."""
    single = scene.count == 1
    words = {
        "n": _NUMBERS[scene.count],
        "c": scene.color,
        "s": scene.shape if single else scene.shape + "s",
        "b": scene.background,
        "w": _WHERE[scene.position] if scene.position else "",
    }
    templates = rng.sample(_SINGLE if single else _GROUP, REFERENCES_PER_IMAGE)
    return [t.format(z=rng.choice(_SIZE_WORDS[scene.size]), **words) for t in templates]


def render(scene: Scene, rng: random.Random, side: int = 128, hard: random.Random | None = None) -> Image.Image:
    """Draw ``scene`` as a ``side`` x ``side`` RGB image; in the hard style (``synth_hard``) when ``hard`` is given.

    Both styles draw the same values from ``rng``, in the same order (background, colour, layout): what ``rng``
    gives next (the captions) is then the same for an image's easy and hard renderings. ``hard`` is the hard
    style's own RNG.
    """
    big = side * _SUPERSAMPLE
    backdrop = _jitter(BACKGROUNDS[scene.background], rng, 8)
    fill = _jitter(COLORS[scene.color], rng, _COLOR_JITTER)  # one colour per scene: "two red squares" match
    layout = _layout(scene, rng)
    if hard is None:
        image = Image.new("RGB", (big, big), backdrop)
    else:
        image = synth_hard.background(backdrop, big, hard)
        synth_hard.draw_clutter(image, backdrop, hard)
        fill = synth_hard.pull(fill, backdrop, hard)
        layout = [(cx, cy, extent * synth_hard.SCALE) for cx, cy, extent in layout]
    draw = ImageDraw.Draw(image)
    for cx, cy, extent in layout:
        half = extent * big / 2
        x, y = cx * big, cy * big
        if scene.shape == "circle":
            draw.ellipse((x - half, y - half, x + half, y + half), fill=fill)
        elif scene.shape == "square":
            draw.rectangle((x - half, y - half, x + half, y + half), fill=fill)
        else:
            draw.polygon([(x, y - half), (x - half, y + half), (x + half, y + half)], fill=fill)
    image = image.resize((side, side), Image.Resampling.LANCZOS)
    return image if hard is None else synth_hard.degrade(image, hard)


def _layout(scene: Scene, rng: random.Random) -> list[tuple[float, float, float]]:
    """Centre x, centre y and extent (fractions of the side) of each object; a group's never overlap."""
    single_range, group_range = _EXTENT[scene.size]
    if scene.position is not None:
        cx, cy = POSITIONS[scene.position]
        extent = rng.uniform(*single_range)
        low, high = extent / 2 + 0.01, 1 - extent / 2 - 0.01  # a big one on the left still fits in the frame
        jitter = 0.04
        cx = min(high, max(low, cx + rng.uniform(-jitter, jitter)))
        cy = min(high, max(low, cy + rng.uniform(-jitter, jitter)))
        return [(cx, cy, extent)]
    while True:  # rejection sampling; three objects of at most 0.32 fit easily, so this ends quickly
        placed: list[tuple[float, float, float]] = []
        for _ in range(200):
            extent = rng.uniform(*group_range)
            margin = extent / 2 + 0.03
            cx, cy = rng.uniform(margin, 1 - margin), rng.uniform(margin, 1 - margin)
            if all(((cx - x) ** 2 + (cy - y) ** 2) ** 0.5 > (extent + e) * 0.75 for x, y, e in placed):
                placed.append((cx, cy, extent))
                if len(placed) == scene.count:
                    return placed


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, v + rng.randint(-amount, amount))) for v in rgb)
    return r, g, b


def is_hard(difficulty: str, seed: int, index: int) -> bool:
    """Whether image ``index`` of a ``difficulty`` set is drawn in the hard style.

    In a mixed set a coin of its own (seeded on the seed and the index, apart from the scene's RNG) decides, so
    the scene at each index is the easy set's, and a mixed set is half easy, half hard.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    if difficulty == "mixed":
        return random.Random(f"captioner-synth-difficulty:{seed}:{index}").random() < 0.5
    return difficulty == "hard"


def write_dataset(out: Path, images: int, seed: int = 0, side: int = 128, difficulty: str = "easy") -> Path:
    """Write ``images`` scenes as PNGs under ``out`` and their captions to ``out/captions.json``; return its path.

    An easy set is what this wrote before difficulties existed, byte for byte. Hard and mixed sets record each
    image's difficulty in its entry (``"difficulty": "easy" | "hard"``) and the set's in ``info``.
    """
    if images < 1:
        raise ValueError("--images must be at least 1")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(images):
        # A string seed is hashed with SHA-512 (not Python's randomised hash): the same on every run and machine.
        rng = random.Random(f"captioner-synth:{seed}:{index}")
        scene = random_scene(rng)
        hard = is_hard(difficulty, seed, index)
        style = random.Random(f"captioner-synth-hard:{seed}:{index}") if hard else None
        file_name = f"{index:06d}.png"
        buffer = io.BytesIO()
        render(scene, rng, side, style).save(buffer, format="PNG")
        (out / file_name).write_bytes(buffer.getvalue())
        entry = {"id": index, "file_name": file_name, "width": side, "height": side, "scene": asdict(scene)}
        if difficulty != "easy":  # an easy set keeps its old bytes; a reader takes a missing value as easy
            entry["difficulty"] = "hard" if hard else "easy"
        entries.append(entry)
        for caption in captions_for(scene, rng):
            annotations.append({"id": len(annotations), "image_id": index, "caption": caption})
    path = out / "captions.json"
    info: dict[str, Any] = {"description": "captioner synthetic shapes", "seed": seed, "version": 1}
    if difficulty != "easy":
        info["difficulty"] = difficulty
    document = {"info": info, "images": entries, "annotations": annotations}
    # Written last: a folder with captions.json is a complete set.
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return path


def add_synth_command(actions: Any) -> None:
    """Register ``synth`` on the ``data`` command's subparsers ``actions``."""
    synth = add_command(
        actions,
        "synth",
        help="draw a synthetic captioning set (shapes and colours) in COCO captions format",
        doc=__doc__,
    )
    synth.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the images and captions")
    synth.add_argument("--images", required=True, type=int, metavar="N", help="how many images")
    synth.add_argument("--seed", type=int, default=0, help="the same seed gives the same set (default 0)")
    synth.add_argument("--side", type=int, default=128, metavar="PX", help="image width and height (default 128)")
    synth.add_argument(
        "--difficulty",
        choices=DIFFICULTIES,
        default="easy",
        help="easy: plain scenes; hard: small, low-contrast objects on noisy ground; mixed: each image either "
        "(default easy)",
    )
    run: Callable[[argparse.Namespace], int] = _synth
    synth.set_defaults(run=run)


def _synth(args: argparse.Namespace) -> int:
    if args.images < 1 or args.side < 16:
        print("data synth: --images must be at least 1 and --side at least 16", file=sys.stderr)
        return 2
    path = write_dataset(args.out, args.images, seed=args.seed, side=args.side, difficulty=args.difficulty)
    print(f"wrote {args.images} images and {args.images * REFERENCES_PER_IMAGE} captions to {args.out}")
    print(f"score a model on it with: captioner eval --annotations {path} --images {args.out}")
    return 0
