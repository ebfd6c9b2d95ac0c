"""Synthetic test photos for the benchmarks: distinct, deterministic, and cheap to make.

Each seed gives a different smooth colour field with a few hard-edged blocks, JPEG-encoded like a camera would
(quality 90, 4:2:0). ``unique`` stamps a serial number into a JPEG comment, so every request has its own
SHA-256 and nothing hits the cache unless a run asks for repeats.
"""

from __future__ import annotations

import base64
import io
import json
import uuid

import numpy as np
from PIL import Image

BODY_FORMATS = ("json", "raw", "multipart")


def photo(seed: int, width: int = 640, height: int = 480, *, fmt: str = "JPEG", quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    # A coarse random grid upscaled bilinearly: smooth gradients, like sky and walls, that JPEG handles as a
    # camera photo would; the blocks add edges so resizing has real work to do.
    coarse = rng.integers(0, 256, size=(max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image).copy()
    for _ in range(6):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 20 + 1, width // 4 + 2)), int(rng.integers(height // 20 + 1, height // 4 + 2))
        pixels[y : y + h, x : x + w] = rng.integers(0, 256, size=3, dtype=np.uint8)
    buffer = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    else:
        Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def unique(jpeg: bytes, serial: int) -> bytes:
    """``jpeg`` with a comment segment holding ``serial``: same pixels, new bytes, so a new cache key.

    The load generator cycles through a pool of distinct photos and stamps every request this way, which is
    microseconds of client work instead of milliseconds of encoding per request.
    """
    if not jpeg.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG")
    payload = f"captioner-bench {serial}".encode()
    segment = b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:2] + segment + jpeg[2:]


def request_body(image: bytes, body_format: str) -> tuple[bytes, str]:
    """The HTTP body and Content-Type that carry ``image`` in one of the API's three forms."""
    if body_format == "raw":
        return image, "image/jpeg"
    if body_format == "json":
        return json.dumps({"image": base64.b64encode(image).decode("ascii")}).encode(), "application/json"
    if body_format == "multipart":
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        return head + image + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
    raise ValueError(f"body format must be one of {BODY_FORMATS}, got {body_format!r}")
