"""The pixel limit holds before any decoder runs, for every format the preprocessor accepts (ICO included)."""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from typing import Any

import PIL.Image as PILImage
import pytest
from PIL import Image

from captioner.errors import TooLarge
from captioner.model.pixel_guard import check_icon
from captioner.model.preprocessing import _WANTED_FORMATS, ImagePreprocessor
from tests.support.images import black_png

MAX_PIXELS = 10_000  # 100 x 100
SIDE = 120  # 14,400 pixels: over the limit


def preprocessor(max_pixels: int = MAX_PIXELS) -> ImagePreprocessor:
    return ImagePreprocessor(
        height=32, width=32, image_mean=[0.5] * 3, image_std=[0.5] * 3, max_pixels=max_pixels, jpeg_draft=False
    )


def encoded(fmt: str) -> bytes:
    image = Image.new("RGB", (SIDE, SIDE), (10, 200, 30))
    buffer = io.BytesIO()
    params: dict[str, Any] = {"sizes": [(SIDE, SIDE)]} if fmt == "ICO" else {}
    if fmt == "MPO":
        image.save(buffer, format="MPO", save_all=True, append_images=[image])
    else:
        (image.convert("P") if fmt == "GIF" else image).save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.fixture
def decoders_started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the Pillow decoders created (the moment pixels start being decoded), and WebP/AVIF frame reads."""
    started: list[str] = []
    original = PILImage._getdecoder

    def recording(mode: str, decoder_name: str, *args: Any, **kwargs: Any) -> Any:
        started.append(decoder_name)
        return original(mode, decoder_name, *args, **kwargs)

    monkeypatch.setattr(PILImage, "_getdecoder", recording)
    yield started


@pytest.mark.parametrize("fmt", _WANTED_FORMATS)
def test_no_format_is_decoded_before_the_pixel_check(fmt: str, decoders_started: list[str]) -> None:
    data = encoded(fmt)
    with pytest.raises(TooLarge):
        preprocessor().decode(data)
    assert decoders_started == [], f"{fmt}: decoded {decoders_started} before refusing"
    # The same file under a larger limit decodes (the refusal was the limit, not the file).
    assert preprocessor(SIDE * SIDE).decode(data)[0].size == (SIDE, SIDE)


def icon_around(embedded: bytes, listed: tuple[int, int] = (16, 16)) -> bytes:
    """An ICO whose directory lists ``listed`` (1 byte a side) but holds ``embedded``, which can be any size."""
    entry = struct.pack("<BBBBHHII", listed[0] % 256, listed[1] % 256, 0, 0, 1, 32, len(embedded), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + embedded


def test_an_icon_whose_directory_lies_is_refused_from_the_embedded_header(decoders_started: list[str]) -> None:
    data = icon_around(black_png(3000, 3000))  # 9 MP behind a "16x16" directory entry
    with pytest.raises(TooLarge, match="3000x3000"):
        preprocessor(1_000_000).decode(data)
    assert decoders_started == []


def test_check_icon_reads_bmp_and_png_entries() -> None:
    check_icon(icon_around(black_png(50, 50)), 2500)  # at the limit
    with pytest.raises(TooLarge):
        check_icon(icon_around(black_png(51, 50)), 2500)
    dib = struct.pack("<Iii", 40, 80, 160) + bytes(40)  # 80 x 80 (the height counts the AND mask too)
    with pytest.raises(TooLarge, match="80x80"):
        check_icon(icon_around(dib), 6399)
    check_icon(b"\x00\x00\x01\x00\x05\x00", 1)  # a directory cut short: left for Pillow to refuse
    check_icon(b"not an icon", 1)


def test_pillows_own_limit_is_ours_and_its_warning_an_error() -> None:
    preprocessor(40_000_000)
    assert Image.MAX_IMAGE_PIXELS >= 40_000_000
    limit = Image.MAX_IMAGE_PIXELS
    bomb = Image.DecompressionBombWarning
    assert any(action == "error" and category is bomb for action, _, category, _, _ in warnings.filters)
    with pytest.raises(Image.DecompressionBombWarning):
        PILImage._decompression_bomb_check((limit + 1, 1))
