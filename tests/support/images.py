"""Images for tests: distinct synthetic photos, huge-but-small PNGs, and the two populations of the drift tests."""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image, ImageDraw


def photo(seed: int, size: tuple[int, int] = (160, 120), fmt: str = "PNG") -> bytes:
    """A distinct synthetic 'photo' per seed: a gradient background with a few coloured shapes."""
    rng = random.Random(seed)
    width, height = size
    base = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", size, base)  # type: ignore[arg-type]
    draw = ImageDraw.Draw(image)
    for y in range(0, height, 4):
        shade = tuple((c + y * rng.randrange(1, 4)) % 256 for c in base)
        draw.rectangle([0, y, width, y + 3], fill=shade)  # type: ignore[arg-type]
    for _ in range(4):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        box = [x0, y0, x0 + rng.randrange(10, width // 2), y0 + rng.randrange(10, height // 2)]
        draw.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))  # type: ignore[arg-type]
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def varied(data: bytes, n: int) -> bytes:
    """``data`` (a PNG) with its top-left pixel's red channel moved by ``n``: the same picture to a model, but new
    bytes, so another SHA-256 and a cache miss (the canary analysis counts only requests the model ran)."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    r, g, b = image.getpixel((0, 0))  # type: ignore[misc]
    image.putpixel((0, 0), ((r + n) % 256, g, b))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def black_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of any size, streamed through zlib: even 900 megapixels take about 100 KB."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def normal_photo(seed: int) -> tuple[bytes, str]:
    """A 'normal' upload: 160-320 px wide, landscape-ish, mid brightness, JPEG or PNG."""
    rng = random.Random(seed)
    size = (rng.randint(160, 320), rng.randint(120, 240))
    fmt = rng.choice(("JPEG", "JPEG", "PNG"))
    return photo(seed, size=size, fmt=fmt), f"image/{fmt.lower()}"


def dark_tiny(seed: int) -> tuple[bytes, str]:
    """A very dark 24x24 thumbnail."""
    rng = random.Random(seed)
    image = Image.new("RGB", (24, 24), tuple(rng.randint(0, 10) for _ in range(3)))  # type: ignore[arg-type]
    ImageDraw.Draw(image).rectangle([2, 2, 2 + rng.randint(2, 12), 2 + rng.randint(2, 12)], fill=(25, 18, 20))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"
