"""Seed inputs for the image-decoder fuzzer: one small, valid file per format and mode the server accepts,
plus the kinds of almost-images that exercise the error paths.

``python fuzz/seeds.py DIR`` writes them to DIR (a libFuzzer corpus folder); the test suite imports
``seed_inputs()`` to run the harness over them.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

from PIL import Image


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels and whose data is empty: the pixel-limit path."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _icon_around(embedded: bytes) -> bytes:
    """An ICO whose directory entry says 256x256 but holds ``embedded``: Pillow decodes it inside Image.open."""
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(embedded), 22)
    return struct.pack("<HHH", 0, 1, 1) + entry + embedded


def request_seeds() -> dict[str, bytes]:
    """Seeds for fuzz_requests.py: request bodies and parameters of every odd class issue 13 names."""
    return {
        "json-image.json": b'{"image": "iVBORw0KGgo=", "num_captions": 2}',
        "json-url.json": b'{"url": "https://example.com/cat.png"}',
        "json-nested.json": b"[" * 2000 + b"]" * 2000,
        "json-big-int.json": b'{"num_captions": ' + b"9" * 5000 + b"}",
        "json-not-utf8.json": b'{"image": "\xff\xfe"}',
        "base64-lines.txt": b"iVBORw0KGgoAAAANSUhEUgAA\r\nAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4\n",
        "base64-non-ascii.txt": "\u00c5\u00c5\u00c5\u00c5".encode(),
        "digits-superscript.txt": "\u00b2".encode(),
        "digits-arabic.txt": "\u0661".encode(),
        "digits-long.txt": b"9" * 5000,
        "address-v6.txt": b"2001:db8::1",
        "address-junk.txt": b"not, an; address",
        "icon-bomb.ico": _icon_around(_png_header(30_000, 30_000)),
    }


def seed_inputs() -> dict[str, bytes]:
    rgb = Image.new("RGB", (12, 8), (200, 40, 40))
    for x in range(12):
        rgb.putpixel((x, x % 8), (10, 10 * x, 250))
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate to display
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    paletted = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    paletted.info["transparency"] = 0
    return {
        "rgb.png": _encode(rgb, "PNG"),
        "rgba.png": _encode(rgb.convert("RGBA"), "PNG"),
        "palette-transparency.png": _encode(paletted, "PNG"),
        "grey16.png": _encode(rgb.convert("L").convert("I;16"), "PNG"),
        "baseline.jpg": _encode(rgb, "JPEG", quality=90),
        "progressive.jpg": _encode(rgb, "JPEG", quality=90, progressive=True),
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG"),
        "exif-orientation-6.jpg": _encode(rgb, "JPEG", exif=exif.tobytes()),
        "animated.gif": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "lossless.webp": _encode(rgb, "WEBP", lossless=True),
        "rgb.bmp": _encode(rgb, "BMP"),
        "lzw.tiff": _encode(rgb, "TIFF", compression="tiff_lzw"),
        "rgb.ppm": _encode(rgb, "PPM"),
        "icon.ico": _encode(rgb, "ICO"),
        "icon-bomb.ico": _icon_around(_png_header(30_000, 30_000)),  # decoded inside Image.open before the fix
        "huge-header.png": _png_header(30_000, 30_000),
        "truncated.jpg": _encode(rgb, "JPEG")[:200],
        "svg.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>',
        "pdf.pdf": b"%PDF-1.4\n1 0 obj\n<< >>\nendobj\n%%EOF\n",
        "empty.bin": b"",
    }


def main(argv: list[str]) -> int:
    requests = "--requests" in argv  # seeds for fuzz_requests.py instead of fuzz_images.py
    argv = [a for a in argv if a != "--requests"]
    if len(argv) != 2:
        print("usage: python fuzz/seeds.py [--requests] CORPUS_DIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    seeds = request_seeds() if requests else seed_inputs()
    for name, data in seeds.items():
        (out / name).write_bytes(data)
    print(f"wrote {len(seeds)} seeds to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
