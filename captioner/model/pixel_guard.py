"""The pixel limit, enforced before any decoder allocates pixels, for every format we accept.

``Image.open`` reads only headers for most formats, and ``preprocessing`` checks ``width * height`` right after.
Two holes around that:

- ICO decodes inside ``Image.open``: its plugin loads the largest embedded image (a PNG or BMP of any size,
  whatever the 1-byte sizes in the icon directory say) while opening. ``check_icon`` reads every embedded
  image's real size from its own header first.
- Pillow has a bomb check of its own (``Image.MAX_IMAGE_PIXELS``, 89 M pixels by default), which also runs
  inside plugins (ICO frames, for one) but only *warns* below twice its limit. ``harden_pillow`` sets it to
  ``limits.max_pixels`` and turns its ``DecompressionBombWarning`` into an exception, which ``preprocessing``
  answers 413 ``too_large`` like our own check.
"""

from __future__ import annotations

import struct
import warnings

from PIL import Image

from captioner.errors import TooLarge

_PNG = b"\x89PNG\r\n\x1a\n"
_ICO_HEADER = struct.Struct("<HHH")  # reserved (0), type (1: icon), number of images
_ICO_ENTRY = struct.Struct("<BBBBHHII")  # width, height, colours, reserved, planes, bpp, bytes, offset
_DIB_SIZE = struct.Struct("<Iii")  # header size, width, height (twice the image: XOR bitmap + AND mask)


_configured_limit: int | None = None


def harden_pillow(max_pixels: int) -> None:
    """Pillow's own bomb check at our limit, its warning an error.

    Both are process-wide. A server's preprocessors all share ``limits.max_pixels``; should several limits
    meet in one process (tests), Pillow's is the largest, so it never refuses what a preprocessor allows:
    each preprocessor's own check is exact anyway.
    """
    global _configured_limit
    _configured_limit = max_pixels if _configured_limit is None else max(_configured_limit, max_pixels)
    Image.MAX_IMAGE_PIXELS = _configured_limit
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def is_icon(data: bytes) -> bool:
    return data[:4] == b"\x00\x00\x01\x00"


def check_icon(data: bytes, max_pixels: int) -> None:
    """``TooLarge`` if any image inside an ICO file has more than ``max_pixels`` pixels (by its own header)."""
    if len(data) < _ICO_HEADER.size or not is_icon(data):
        return
    _, _, count = _ICO_HEADER.unpack_from(data)
    for index in range(count):
        at = _ICO_HEADER.size + index * _ICO_ENTRY.size
        if at + _ICO_ENTRY.size > len(data):
            return  # a truncated directory: Pillow refuses it, nothing was decoded
        width, height, _, _, _, _, _, offset = _ICO_ENTRY.unpack_from(data, at)
        size = _embedded_size(data, offset) or (width or 256, height or 256)
        if size[0] * size[1] > max_pixels:
            raise TooLarge(f"the icon holds a {size[0]}x{size[1]} image; at most {max_pixels} pixels are accepted")


def _embedded_size(data: bytes, offset: int) -> tuple[int, int] | None:
    """Width and height from an embedded PNG's IHDR or BMP's DIB header; None when neither is readable."""
    if data[offset : offset + 8] == _PNG and offset + 24 <= len(data):
        width, height = struct.unpack_from(">II", data, offset + 16)
        return width, height
    if offset + _DIB_SIZE.size <= len(data):
        _, width, height = _DIB_SIZE.unpack_from(data, offset)
        return abs(width), abs(height) // 2
    return None
