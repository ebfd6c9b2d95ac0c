"""Bytes -> validated RGB image -> the BLIP model's input tensor.

Runs in worker threads, never on the event loop, so everything here is plain synchronous code.

Parity: ``BlipProcessor.from_pretrained`` in transformers 5.x picks the torchvision-backend
``BlipImageProcessor`` (``PilBackend``'s ``BlipImageProcessorPil`` only when asked for). For a PIL image it
does: ``convert_to_rgb`` (alpha composited on white) -> uint8 CHW tensor -> ``tvF.resize`` (bicubic,
antialias) to height x width -> float32 -> ``tvF.normalize`` with mean/std pre-multiplied by
``1 / rescale_factor``. ``prepare_pil`` does exactly those calls, so the tensors are bit-identical.

Deliberate departures from calling the processor on ``Image.open(data)``:

- EXIF orientation is applied (the processor ignores it; phone photos would come out sideways).
- 16-bit greyscale (``I;16*``, ``I``) is scaled to 8 bits by keeping the high byte, the way Pillow already
  reads 16-bit RGB PNGs; Pillow's ``convert("RGB")`` would clip everything above 255 to white. ``F`` is read
  as 0..1 when it fits there, else clipped to 0..255.
- Big JPEGs are decoded at reduced scale (libjpeg DCT scaling via ``Image.draft``), which is much faster and
  close to, but not bit-identical with, the full decode. Every other format takes the exact path.

Errors: empty, unrecognised, truncated or corrupt data -> ``InvalidImage`` (400). Formats we recognise by
their signature but cannot decode (SVG, PDF, HEIC/HEIF) -> ``UnsupportedMediaType`` (415) so the client
learns to convert rather than that its file is broken. More than ``max_pixels`` pixels (read from the header,
before any pixel is allocated, for every allowed format: see ``pixel_guard``) -> ``TooLarge`` (413).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvF

from captioner.errors import CaptionerError, InvalidImage, TooLarge, UnsupportedMediaType
from captioner.model.formats import sniff_supported, sniff_unsupported
from captioner.model.pixel_guard import check_icon, harden_pillow

# Only these decoders may touch client bytes: each is common for photos and has a magic number. The rest of
# Pillow's plugins (EPS shells out to Ghostscript; TGA has no signature so random bytes "open") stay off.
_WANTED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "ICO", "PPM", "AVIF")
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})
# Draft decoding keeps at least this many times the target size, so the final antialiased resize still
# does real filtering; at 1x the DCT shortcut alone visibly aliases fine texture.
_DRAFT_MARGIN = 2
SAMPLE_SIDE = 64

# PIL resample codes (as in preprocessor_config.json) -> what transformers' torchvision backend uses.
_INTERPOLATION = {
    0: InterpolationMode.NEAREST_EXACT,
    1: InterpolationMode.LANCZOS,
    2: InterpolationMode.BILINEAR,
    3: InterpolationMode.BICUBIC,
    4: InterpolationMode.BOX,
    5: InterpolationMode.HAMMING,
}

# EXIF orientation -> the transpose that undoes it (the table ImageOps.exif_transpose uses).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class ImageInfo:
    """Facts about the input for logs and metrics; width/height are as displayed (after EXIF orientation)."""

    format: str
    width: int
    height: int
    mode: str
    orientation: int = 1  # EXIF orientation (1: as stored), already applied to the decoded image


@dataclass(frozen=True)
class EncodedJpeg:
    """A checked JPEG left encoded, to be decoded with its batch on the model's device (``model.jpeg_decode``)."""

    data: torch.Tensor  # uint8 [n]: the file's bytes, as torchvision.io.decode_jpeg takes them
    orientation: int  # EXIF orientation, applied after decoding


@dataclass(frozen=True)
class PreparedImage:
    pixel_values: torch.Tensor  # float32 [3, H, W]; empty when ``jpeg`` holds the image still encoded
    info: ImageInfo
    # At most SAMPLE_SIDE px a side, nearest-neighbour: a cheap unbiased sample of the decoded RGB pixels for
    # input statistics (drift monitoring) that does not keep the full-size image alive.
    sample: Image.Image | None = None
    jpeg: EncodedJpeg | None = None


class ImagePreprocessor:
    def __init__(
        self,
        *,
        height: int,
        width: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        rescale_factor: float = 1 / 255,
        max_pixels: int = 40_000_000,
        resample: int = 3,
        jpeg_draft: bool = True,
    ) -> None:
        if height <= 0 or width <= 0 or max_pixels <= 0:
            raise ValueError("height, width and max_pixels must be positive")
        if resample not in _INTERPOLATION:
            raise ValueError(f"unsupported resample {resample!r}")
        self.height = height
        self.width = width
        self.max_pixels = max_pixels
        self.jpeg_draft = jpeg_draft
        self._interpolation = _INTERPOLATION[resample]
        self._mean = _fuse(image_mean, rescale_factor)
        self._std = _fuse(image_std, rescale_factor)
        Image.init()
        self._formats = tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)
        harden_pillow(max_pixels)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, max_pixels: int) -> ImagePreprocessor:
        """Read the image-processor settings a ``save_pretrained`` left in ``model_dir``."""
        model_dir = Path(model_dir)
        config: dict[str, Any]
        if (model_dir / "preprocessor_config.json").is_file():
            config = json.loads((model_dir / "preprocessor_config.json").read_text())
        elif (model_dir / "processor_config.json").is_file():  # v5 BlipProcessor.save_pretrained nests it here
            config = json.loads((model_dir / "processor_config.json").read_text())["image_processor"]
        else:
            raise FileNotFoundError(f"no preprocessor_config.json or processor_config.json in {model_dir}")
        # Refuse settings this module does not implement rather than silently feeding the model other pixels.
        for flag, wanted in (
            ("do_resize", True),
            ("do_rescale", True),
            ("do_normalize", True),
            ("do_center_crop", False),
            ("do_pad", False),
        ):
            if bool(config.get(flag, wanted)) != wanted:
                raise ValueError(f"preprocessor_config.json: {flag}={config[flag]!r} is not supported")
        size = config.get("size", {"height": 384, "width": 384})
        if not isinstance(size, dict) or "height" not in size or "width" not in size:
            raise ValueError(f"preprocessor_config.json: size must have height and width, got {size!r}")
        return cls(
            height=int(size["height"]),
            width=int(size["width"]),
            image_mean=[float(v) for v in config["image_mean"]],
            image_std=[float(v) for v in config["image_std"]],
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
            resample=int(config.get("resample", 3)),
            max_pixels=max_pixels,
        )

    def __call__(self, data: bytes) -> PreparedImage:
        image, info = self.decode(data)
        return PreparedImage(pixel_values=self.prepare_pil(image), info=info, sample=pixel_sample(image))

    def decode(self, data: bytes, *, draft_side: int | None = None) -> tuple[Image.Image, ImageInfo]:
        """Decode ``data`` into an RGB image: EXIF-oriented, first frame only, transparency on white.

        A big JPEG comes back decoded at reduced scale (still at least twice the target size, or at least
        ``draft_side`` a side when given); ``ImageInfo`` always describes the original.
        """
        if not data:
            raise InvalidImage("the image is empty (0 bytes)")
        try:
            return self._decode(data, draft_side)
        except CaptionerError:
            raise
        except MemoryError:
            raise  # the server is short of memory; not the client's fault
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's own check fired
            raise TooLarge(f"the image has too many pixels ({exc})") from exc
        except UnidentifiedImageError as exc:
            kind = sniff_unsupported(data)
            if kind is not None:
                raise UnsupportedMediaType(
                    f"{kind} images are not supported; send JPEG, PNG, WebP, GIF, BMP or TIFF"
                ) from exc
            kind = sniff_supported(data)
            if kind is not None:  # the signature is right, the header behind it is not
                raise InvalidImage(f"the {kind} image is corrupt: its header could not be read") from exc
            raise InvalidImage("the body is not a recognised image (JPEG, PNG, WebP, GIF, BMP or TIFF)") from exc
        except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, struct.error, EOFError, ...
            detail = str(exc)[:200] or type(exc).__name__
            raise InvalidImage(f"the image is truncated or corrupt: {detail}") from exc

    def prepare_pil(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image -> float32 [3, height, width], the same calls as the processor's torchvision path."""
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode}")
        return self.prepare_pixels(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous().unsqueeze(0))[0]

    def prepare_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, h, w] RGB images of one size, on any device -> float32 [N, 3, height, width] there."""
        pixels = tvF.resize(pixels, [self.height, self.width], interpolation=self._interpolation, antialias=True)
        # The processor casts then normalises in place; a fresh float tensor lets us do the same.
        out: torch.Tensor = tvF.normalize(pixels.to(torch.float32), self._mean, self._std, inplace=True)
        return out

    def _decode(self, data: bytes, draft_side: int | None) -> tuple[Image.Image, ImageInfo]:
        check_icon(data, self.max_pixels)  # ICO decodes inside Image.open: its sizes are checked first
        image = Image.open(io.BytesIO(data), formats=self._formats)  # reads the header only (ICO aside)
        width, height = image.size
        if width * height > self.max_pixels:
            raise TooLarge(f"the image is {width}x{height} pixels; at most {self.max_pixels} pixels are accepted")
        fmt, mode = image.format or "unknown", image.mode

        if fmt in _DRAFT_FORMATS and (draft_side or self.jpeg_draft):
            # A square of the larger target side, so EXIF rotation can't make it too small (and EXIF must not be
            # read yet, see below). Draft only ever scales by 1/2, 1/4 or 1/8 and never below the requested
            # size, so small JPEGs are decoded exactly.
            side = draft_side or max(self.width, self.height) * _DRAFT_MARGIN
            image.draft("RGB", (side, side))
        # Decode now, so truncated or corrupt data fails here (LOAD_TRUNCATED_IMAGES stays off). This must come
        # before getexif(): for PNG that loads the pixels itself, and _orientation swallows errors, after which
        # a second load() is a silent no-op on the half-decoded image.
        image.load()

        orientation = _orientation(image)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        rgb = _to_rgb(image)
        if orientation in _ORIENTATION:
            rgb = rgb.transpose(_ORIENTATION[orientation])
        return rgb, ImageInfo(format=fmt, width=width, height=height, mode=mode, orientation=orientation)


def pixel_sample(image: Image.Image, side: int = SAMPLE_SIDE) -> Image.Image:
    """A nearest-neighbour copy at most ``side`` px a side: it reads only the pixels it keeps (~0.02 ms at 12 MP)."""
    w, h = image.size
    scale = min(1.0, side / max(w, h, 1))
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.NEAREST)


def _fuse(values: Sequence[float], rescale_factor: float) -> list[float]:
    # The fusion, in the same float32 arithmetic, of TorchvisionBackend._fuse_mean_std_and_rescale_factor:
    # normalising raw 0..255 values by mean/rf and std/rf. tvF.normalize turns the list back into these float32s.
    fused: list[float] = (torch.tensor(list(values), dtype=torch.float32) * (1.0 / rescale_factor)).tolist()
    return fused


def _orientation(image: Image.Image) -> int:
    # A broken EXIF block should not fail an otherwise good photo: treat it as "no orientation".
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
        return value if isinstance(value, int) else 1
    except Exception:
        return 1


def _to_rgb(image: Image.Image) -> Image.Image:
    """Like transformers' ``convert_to_rgb`` (so PNG parity holds), except high-bit-depth grey is scaled."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(image).astype(np.int64).clip(0, 65535) >> 8  # high byte: 65535 -> 255
        image = Image.fromarray(grey.astype(np.uint8))
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        image = Image.fromarray(values.round().clip(0, 255).astype(np.uint8))
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    # convert() on an RGB image is a full copy; the values are the same, so skip it.
    return image if image.mode == "RGB" else image.convert("RGB")
