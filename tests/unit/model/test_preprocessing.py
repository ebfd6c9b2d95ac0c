"""captioner.model.preprocessing: decoding every common mode/format, refusing bad input, and bit-exact processor parity.

Parity is checked against ``BlipImageProcessor`` (the torchvision backend, which is what
``BlipProcessor.from_pretrained`` picks in transformers 5.x): ``BlipProcessor`` only adds a tokenizer, so the
image processor it wraps is the reference. One test builds a real ``BlipProcessor`` with a toy vocabulary to
show that it does pick that class. Everything is offline and small, except one 12 MP JPEG for the draft path.
"""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps
from transformers import BlipImageProcessor

from captioner.errors import CaptionerError, InvalidImage, TooLarge, UnsupportedMediaType
from captioner.model.preprocessing import ImagePreprocessor

RED = (230, 20, 20)
BLUE = (20, 20, 230)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("blip-processor")
    BlipImageProcessor().save_pretrained(path)  # defaults: 384x384, bicubic, CLIP mean/std
    return path


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Any:
    return BlipImageProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def pre(model_dir: Path) -> ImagePreprocessor:
    return ImagePreprocessor.from_pretrained(model_dir, max_pixels=40_000_000)


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """Photo-like RGB: smooth colour regions plus mid-frequency texture (pure noise would be unfairly hard)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(height // 64, 2), max(width // 64, 2), 3), dtype=np.uint8)
    fine = rng.integers(0, 256, (max(height // 8, 2), max(width // 8, 2)), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    texture = np.asarray(Image.fromarray(fine).resize((width, height), Image.Resampling.BILINEAR), dtype=np.int16)
    return Image.fromarray((base + (texture[..., None] - 128) // 3).clip(0, 255).astype(np.uint8))


def processed(reference: Any, image: Image.Image) -> torch.Tensor:
    out: torch.Tensor = reference(images=image, return_tensors="pt").pixel_values[0]
    return out


def with_alpha(image: Image.Image, seed: int = 1) -> Image.Image:
    rgba = image.convert("RGBA")
    alpha = np.random.default_rng(seed).integers(0, 256, (image.height, image.width), dtype=np.uint8)
    alpha[0, 0] = 0  # at least one fully transparent pixel
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


def palette_with_transparency(image: Image.Image) -> Image.Image:
    paletted = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    paletted.info["transparency"] = int(np.asarray(paletted)[0, 0])  # index of the top-left pixel's colour
    return paletted


def rgb_with_transparent_colour(image: Image.Image) -> Image.Image:
    image = image.copy()
    image.info["transparency"] = tuple(np.asarray(image)[0, 0].tolist())  # saved as a PNG tRNS chunk
    return image


# ---------------------------------------------------------------- every mode / format decodes to RGB


def solid(mode: str, colour: Any = RED, size: tuple[int, int] = (24, 16)) -> Image.Image:
    image = Image.new("RGB", size, colour)
    return image.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else image.convert(mode)


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (24, 16), RED), Image.new("RGB", (24, 16), BLUE)]
    extra: dict[str, Any] = {"lossless": True} if fmt == "WEBP" else {}
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)


def grey16() -> Image.Image:
    return Image.fromarray(np.full((16, 24), 40_000, dtype=np.uint16))  # mode I;16


CASES: dict[str, Callable[[], bytes]] = {
    "png-rgb": lambda: encode(solid("RGB"), "PNG"),
    "png-rgba": lambda: encode(solid("RGBA"), "PNG"),
    "png-p": lambda: encode(solid("P"), "PNG"),
    "png-p-transparency": lambda: encode(palette_with_transparency(scene(24, 16)), "PNG"),
    "png-l": lambda: encode(solid("L"), "PNG"),
    "png-la": lambda: encode(solid("LA"), "PNG"),
    "png-i16": lambda: encode(grey16(), "PNG"),
    "png-1bit": lambda: encode(solid("1"), "PNG"),
    "apng-first-frame": lambda: animated("PNG"),
    "tiff-i32": lambda: encode(Image.fromarray(np.full((16, 24), 40_000, dtype=np.int32)), "TIFF"),
    "tiff-f": lambda: encode(Image.fromarray(np.full((16, 24), 0.5, dtype=np.float32)), "TIFF"),
    "tiff-rgb": lambda: encode(solid("RGB"), "TIFF", compression="tiff_lzw"),
    "tiff-cmyk": lambda: encode(solid("CMYK"), "TIFF"),
    "tiff-lab": lambda: encode(solid("LAB"), "TIFF"),
    "tiff-ycbcr": lambda: encode(solid("YCbCr"), "TIFF"),
    "jpeg-rgb": lambda: encode(solid("RGB"), "JPEG", quality=95),
    "jpeg-cmyk": lambda: encode(solid("CMYK"), "JPEG", quality=95),
    "jpeg-grey": lambda: encode(solid("L"), "JPEG", quality=95),
    "mpo-first-frame": lambda: encode(
        solid("RGB"), "MPO", save_all=True, append_images=[solid("RGB", BLUE)], quality=95
    ),
    "jpeg-progressive": lambda: encode(solid("RGB"), "JPEG", quality=95, progressive=True),
    "gif-first-frame": lambda: animated("GIF"),
    "webp": lambda: encode(solid("RGB"), "WEBP", lossless=True),
    "webp-first-frame": lambda: animated("WEBP"),
    "bmp": lambda: encode(solid("RGB"), "BMP"),
    "ppm": lambda: encode(solid("RGB"), "PPM"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_mode_and_format_decodes_to_rgb(pre: ImagePreprocessor, name: str) -> None:
    image, info = pre.decode(CASES[name]())
    assert image.mode == "RGB"
    assert image.size == (24, 16) == (info.width, info.height)
    out = pre(CASES[name]())
    assert out.pixel_values.shape == (3, 384, 384)
    assert out.pixel_values.dtype == torch.float32
    assert torch.isfinite(out.pixel_values).all()


@pytest.mark.parametrize(
    ("name", "fmt", "mode"),
    [("png-p", "PNG", "P"), ("png-i16", "PNG", "I;16"), ("jpeg-cmyk", "JPEG", "CMYK"), ("gif-first-frame", "GIF", "P")],
)
def test_info_reports_format_and_original_mode(pre: ImagePreprocessor, name: str, fmt: str, mode: str) -> None:
    _, info = pre.decode(CASES[name]())
    assert (info.format, info.mode) == (fmt, mode)


@pytest.mark.parametrize("name", ["png-rgb", "png-p", "png-1bit", "jpeg-rgb", "jpeg-cmyk", "tiff-cmyk", "bmp"])
def test_colours_survive(pre: ImagePreprocessor, name: str) -> None:
    image, _ = pre.decode(CASES[name]())
    expected = (255, 255, 255) if name == "png-1bit" else RED  # 1-bit red is "on"
    assert np.abs(np.asarray(image, dtype=int)[8, 12] - expected).max() <= 8


@pytest.mark.parametrize("name", ["gif-first-frame", "webp-first-frame", "apng-first-frame", "mpo-first-frame"])
def test_animations_use_the_first_frame(pre: ImagePreprocessor, name: str) -> None:
    image, _ = pre.decode(CASES[name]())
    assert np.abs(np.asarray(image, dtype=int)[8, 12] - RED).max() <= 8


def test_16_bit_grey_is_scaled_not_clipped(pre: ImagePreprocessor) -> None:
    for name in ("png-i16", "tiff-i32"):
        image, _ = pre.decode(CASES[name]())
        assert np.asarray(image)[0, 0].tolist() == [40_000 >> 8] * 3  # 156, where convert("RGB") gives 255
    image, _ = pre.decode(CASES["tiff-f"]())
    assert np.asarray(image)[0, 0].tolist() == [128] * 3  # 0.5 of full scale


# ---------------------------------------------------------------- EXIF orientation


def oriented_jpeg(orientation: int) -> bytes:
    image = Image.new("RGB", (20, 10), BLUE)
    image.paste(RED, (0, 0, 6, 6))  # marks the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, subsampling=0, exif=exif.tobytes())


def test_exif_orientation_6_rotates_clockwise(pre: ImagePreprocessor) -> None:
    image, info = pre.decode(oriented_jpeg(6))
    assert image.size == (10, 20) == (info.width, info.height)
    pixels = np.asarray(image, dtype=int)
    assert np.abs(pixels[1, 8] - RED).max() <= 30  # stored top-left is now top-right
    assert np.abs(pixels[1, 1] - BLUE).max() <= 30
    assert pre(oriented_jpeg(6)).pixel_values.shape == (3, 384, 384)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(pre: ImagePreprocessor, orientation: int) -> None:
    data = oriented_jpeg(orientation)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    image, _ = pre.decode(data)
    assert np.array_equal(np.asarray(image), np.asarray(expected))


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_does_not_fail_the_image(pre: ImagePreprocessor) -> None:
    data = encode(Image.new("RGB", (20, 10), RED), "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\xff")
    image, _ = pre.decode(data)
    assert image.size == (20, 10)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "data",
    [
        b"hello, this is plainly text\n",
        b"<!DOCTYPE html><html><body><svg width='10'></svg></body></html>",
        b'{"image": "not really"}',
        bytes(random.Random(0).randrange(256) for _ in range(4096)),
        b"\x89PNG\r\n\x1a\n",  # a signature and nothing else
        b"\xff\xd8\xff",  # ditto for JPEG
        b"GIF89a",
    ],
    ids=["text", "html", "json", "random", "png-signature", "jpeg-signature", "gif-signature"],
)
def test_non_images_are_invalid(pre: ImagePreprocessor, data: bytes) -> None:
    with pytest.raises(InvalidImage):
        pre.decode(data)


def test_empty_body_is_invalid(pre: ImagePreprocessor) -> None:
    with pytest.raises(InvalidImage, match="empty"):
        pre(b"")


@pytest.mark.parametrize(
    "data",
    [
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        b'\xef\xbb\xbf<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "x">\n<svg/>',
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
    ],
    ids=["svg", "svg-xml-declaration", "pdf", "heic"],
)
def test_recognised_but_undecodable_formats_are_415(pre: ImagePreprocessor, data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType):
        pre.decode(data)


def test_formats_outside_the_allowlist_are_refused(pre: ImagePreprocessor) -> None:
    # TGA has no magic number (random bytes can "open" as TGA), so its decoder is never offered client bytes.
    with pytest.raises(InvalidImage):
        pre.decode(encode(solid("RGB"), "TGA"))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_are_invalid(pre: ImagePreprocessor, fmt: str) -> None:
    data = encode(scene(128, 96), fmt, quality=90) if fmt == "JPEG" else encode(scene(128, 96), fmt)
    for cut in (len(data) // 2, len(data) - 40):
        with pytest.raises(InvalidImage):
            pre.decode(data[:cut])


def test_corrupt_png_is_invalid(pre: ImagePreprocessor) -> None:
    data = encode(scene(64, 48), "PNG")
    bad_header = bytearray(data)
    bad_header[18] ^= 0xFF  # inside IHDR: its CRC no longer matches
    with pytest.raises(InvalidImage, match="PNG image is corrupt"):
        pre.decode(bytes(bad_header))
    # Regression: a broken zlib stream used to fail inside getexif() (which loads PNGs), get swallowed there,
    # and leave a half-decoded image that a second load() accepted.
    idat = data.index(b"IDAT") + 4
    bad_stream = data[:idat] + bytes(200) + data[idat + 200 :]
    with pytest.raises(InvalidImage, match="corrupt"):
        pre.decode(bad_stream)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's TIFF reader warns about the damage it skips
def test_mutated_files_only_ever_raise_captioner_errors(pre: ImagePreprocessor) -> None:
    """Pillow raises OSError, SyntaxError, ValueError, struct.error, EOFError...: none may escape as such."""
    rng = random.Random(1234)
    sources = [
        CASES[name]()
        for name in (
            "png-rgba",
            "png-p-transparency",
            "jpeg-progressive",
            "gif-first-frame",
            "webp",
            "tiff-rgb",
            "bmp",
            "png-i16",
        )
    ]
    for _ in range(400):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randrange(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(1, len(data))]
        try:
            pre(bytes(data))
        except CaptionerError as exc:
            assert isinstance(exc, (InvalidImage, TooLarge, UnsupportedMediaType))


# ---------------------------------------------------------------- decompression bombs


def png_header_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of all zeros, streamed through zlib so the test never holds its pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def pixel_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ``load()`` of an opened image's pixels (Pillow's one decoding entry point), by format."""
    loads: list[str] = []
    real_load = ImageFile.ImageFile.load

    def load(image: ImageFile.ImageFile) -> Any:
        loads.append(str(image.format))
        return real_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return loads


def test_30000x30000_png_is_refused_fast(pre: ImagePreprocessor, pixel_loads: list[str]) -> None:
    data = png_header_bomb(30_000, 30_000)
    assert len(data) < 200_000  # 900 megapixels in a few KB of zlib
    with pytest.raises(TooLarge):
        pre.decode(data)
    assert pixel_loads == []  # fast, because refused from the header: not one pixel was decoded


def test_pixel_limit_is_ours_not_pillows(model_dir: Path, pixel_loads: list[str]) -> None:
    # 20 MP is under Pillow's own bomb threshold (never below limits.max_pixels' default, 40 MP: pixel_guard.py),
    # so only our per-image check can refuse it.
    limited = ImagePreprocessor.from_pretrained(model_dir, max_pixels=10_000_000)
    with pytest.raises(TooLarge, match="5000x4000"):
        limited.decode(png_header_bomb(5_000, 4_000))
    assert pixel_loads == []
    small = ImagePreprocessor.from_pretrained(model_dir, max_pixels=1_000)
    with pytest.raises(TooLarge):
        small.decode(encode(solid("RGB", size=(40, 30)), "PNG"))
    small.decode(encode(solid("RGB", size=(40, 25)), "PNG"))  # exactly at the limit is fine
    assert pixel_loads and set(pixel_loads) == {"PNG"}  # and that one was decoded (the hook sees decoding)


# ---------------------------------------------------------------- processor parity


PARITY_MODES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "RGB": lambda im: im,
    "RGBA": with_alpha,
    "P": lambda im: im.convert("P", palette=Image.Palette.ADAPTIVE, colors=200),
    "P+transparency": palette_with_transparency,
    "L": lambda im: im.convert("L"),
    "LA": lambda im: with_alpha(im).convert("LA"),
    "1": lambda im: im.convert("1"),
    "RGB+tRNS": lambda im: rgb_with_transparent_colour(im),
}


SIZES = [(97, 61), (640, 480), (384, 384), (1, 1), (4000, 10), (10, 4000), (3, 700)]


@pytest.mark.parametrize("mode", sorted(PARITY_MODES))
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_png_parity_with_blip_image_processor(
    pre: ImagePreprocessor, reference: Any, mode: str, size: tuple[int, int]
) -> None:
    data = encode(PARITY_MODES[mode](scene(*size, seed=size[0] * 7 + size[1])), "PNG")
    ours = pre(data).pixel_values
    theirs = processed(reference, Image.open(io.BytesIO(data)))
    assert ours.shape == theirs.shape == (3, 384, 384)
    assert torch.equal(ours, theirs)  # bit-exact, not merely allclose


def test_16_bit_png_parity_is_with_its_8_bit_equivalent(pre: ImagePreprocessor, reference: Any) -> None:
    """The one deliberate difference: transformers' convert("RGB") clips 16-bit grey at 255 (a white image)."""
    grey = np.random.default_rng(3).integers(0, 65536, (61, 97), dtype=np.uint16)
    data = encode(Image.fromarray(grey), "PNG")
    ours = pre(data).pixel_values
    assert torch.equal(ours, processed(reference, Image.fromarray((grey >> 8).astype(np.uint8))))
    clipped = processed(reference, Image.open(io.BytesIO(data)))
    assert clipped.mean() > ours.mean() + 1  # what we avoid


def test_parity_with_other_settings(tmp_path: Path) -> None:
    BlipImageProcessor(
        size={"height": 224, "width": 320}, resample=2, image_mean=[0.5] * 3, image_std=[0.25] * 3
    ).save_pretrained(tmp_path)
    pre = ImagePreprocessor.from_pretrained(tmp_path, max_pixels=10_000_000)
    assert (pre.height, pre.width) == (224, 320)
    data = encode(with_alpha(scene(300, 200)), "PNG")
    theirs = processed(BlipImageProcessor.from_pretrained(tmp_path), Image.open(io.BytesIO(data)))
    assert torch.equal(pre(data).pixel_values, theirs)


def test_blip_processor_picks_the_torchvision_image_processor(tmp_path: Path, reference: Any) -> None:
    from transformers import BertTokenizer, BlipProcessor

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo"]))
    processor: Any = BlipProcessor(image_processor=reference, tokenizer=BertTokenizer(str(vocab)))  # type: ignore[no-untyped-call]
    processor.save_pretrained(tmp_path / "p")
    processor = BlipProcessor.from_pretrained(tmp_path / "p")
    assert type(processor.image_processor) is BlipImageProcessor  # not BlipImageProcessorPil
    # and a processor-only directory (processor_config.json, no preprocessor_config.json) is readable too
    pre = ImagePreprocessor.from_pretrained(tmp_path / "p", max_pixels=10_000_000)
    data = encode(palette_with_transparency(scene(200, 150)), "PNG")
    theirs = processor(images=Image.open(io.BytesIO(data)), return_tensors="pt").pixel_values[0]
    assert torch.equal(pre(data).pixel_values, theirs)


def test_prepare_pil_requires_rgb(pre: ImagePreprocessor) -> None:
    with pytest.raises(ValueError, match="RGB"):
        pre.prepare_pil(Image.new("L", (4, 4)))


@pytest.mark.parametrize("flag", [{"do_center_crop": True}, {"do_normalize": False}, {"size": {"shortest_edge": 9}}])
def test_unsupported_processor_settings_fail_at_load(tmp_path: Path, flag: dict[str, Any]) -> None:
    config = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, **flag}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError):
        ImagePreprocessor.from_pretrained(tmp_path, max_pixels=1_000)


# ---------------------------------------------------------------- big JPEG draft path


def test_12mp_jpeg_takes_the_draft_path(pre: ImagePreprocessor, model_dir: Path) -> None:
    data = encode(scene(4000, 3000), "JPEG", quality=90)
    exact = ImagePreprocessor.from_pretrained(model_dir, max_pixels=40_000_000)
    exact.jpeg_draft = False

    image, info = pre.decode(data)
    assert (info.width, info.height) == (4000, 3000)  # info is about the original
    assert image.size == (2000, 1500)  # decoded at 1/2 scale: still >= 2x the 384x384 target

    fast, slow = pre(data).pixel_values, exact(data).pixel_values
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    grey_levels = (fast - slow).abs() * std * 255
    assert grey_levels.mean() < 0.5
    assert grey_levels.max() <= 2.01
    # The speed-up, without a stopwatch (the machine may be loaded): the draft path decodes a quarter of the
    # pixels the exact one does.
    assert exact.decode(data)[0].size == (4000, 3000)


def test_small_jpegs_are_decoded_exactly(pre: ImagePreprocessor, reference: Any) -> None:
    data = encode(scene(640, 480), "JPEG", quality=90)
    assert torch.equal(pre(data).pixel_values, processed(reference, Image.open(io.BytesIO(data))))
