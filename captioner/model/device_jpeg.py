"""``model.jpeg_decode: device``: JPEGs decoded with their batch on the model's device
(``torchvision.io.decode_jpeg(list, device=...)``: nvJPEG's batched decoder on CUDA, libjpeg-turbo on the CPU).

On a preprocessing thread (``defer``), as on the Pillow path: the header is read and ``limits.max_pixels``
checked before any pixel is allocated, then the whole file is decoded once at 1/8 scale (libjpeg's DCT scaling:
the entropy-coded data is all read, the inverse DCT shrinks to a few coefficients). That pass finds truncated
and corrupt files where a bad image fails alone (400), and gives the drift monitor its pixel sample. RGB and
greyscale JPEGs are then left encoded (``EncodedJpeg``); every other image takes the Pillow path as before.

On the model thread (``DeviceJpegDecoder``), per batch: one batched decode on the device, the EXIF orientation,
then the same resize and normalisation calls as the Pillow path (``ImagePreprocessor.prepare_pixels``), once per
group of images of the same size.

Parity with the Pillow path: on the CPU the pixels are libjpeg-turbo's in both, so the tensors are bit-identical
with Pillow's full-scale decode (``jpeg_draft=False``). Pillow's default path decodes big JPEGs at reduced DCT
scale first (``jpeg_draft``), which this never does; nvJPEG's inverse DCT and chroma upsampling also differ from
libjpeg's by a few levels. Tolerance and figures: tests/unit/model/test_gpu_options.py and bench/gpu.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from captioner.model.preprocessing import (
    SAMPLE_SIDE,
    EncodedJpeg,
    ImagePreprocessor,
    PreparedImage,
    pixel_sample,
)

# JPEGs whose pixels nvJPEG and libjpeg turn into RGB alike; CMYK/YCCK (Adobe's inverted inks) stay on Pillow.
_DEFERRED_MODES = frozenset({"RGB", "L"})
_EMPTY = torch.empty(0)

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec's and warns on every call.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io\.image")


def defer(preprocessor: ImagePreprocessor, data: bytes) -> PreparedImage:
    """On a preprocessing thread: check the image, and leave an RGB or greyscale JPEG encoded for its batch."""
    image, info = preprocessor.decode(data, draft_side=SAMPLE_SIDE)  # raises like the Pillow path
    if info.format == "JPEG" and info.mode in _DEFERRED_MODES:
        encoded = EncodedJpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), info.orientation)
        return PreparedImage(pixel_values=_EMPTY, info=info, sample=pixel_sample(image), jpeg=encoded)
    if info.format in ("JPEG", "MPO"):
        return preprocessor(data)  # decoded at 1/8 scale above: decode again at the scale the model needs
    return PreparedImage(pixel_values=preprocessor.prepare_pil(image), info=info, sample=pixel_sample(image))


def orient(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """[C, H, W] turned as EXIF ``orientation`` says, as preprocessing's PIL transposes do (2..8; else as is)."""
    if orientation == 2:
        return pixels.flip(-1)
    if orientation == 3:
        return pixels.flip(-1, -2)
    if orientation == 4:
        return pixels.flip(-2)
    if orientation == 5:
        return pixels.transpose(-1, -2)
    if orientation == 6:
        return pixels.rot90(-1, (-2, -1))
    if orientation == 7:
        return pixels.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return pixels.rot90(1, (-2, -1))
    return pixels


class DeviceJpegDecoder:
    """Decodes a batch's ``EncodedJpeg`` images on ``device`` into the model's normalised input tensors."""

    def __init__(self, preprocessor: ImagePreprocessor, device: torch.device) -> None:
        self._preprocessor = preprocessor
        self.device = device

    def __call__(self, jpegs: Sequence[EncodedJpeg]) -> list[torch.Tensor]:
        """float32 [3, height, width] per image, on the device, in order."""
        images = [orient(image, jpeg.orientation) for image, jpeg in zip(self._decode(jpegs), jpegs, strict=True)]
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(index)
        out: list[torch.Tensor] = [_EMPTY] * len(images)
        for indices in by_size.values():
            prepared = self._preprocessor.prepare_pixels(torch.stack([images[i] for i in indices]))
            for row, index in enumerate(indices):
                out[index] = prepared[row]
        return out

    def _decode(self, jpegs: Sequence[EncodedJpeg]) -> list[torch.Tensor]:
        try:
            decoded: list[torch.Tensor] = decode_jpeg(
                [j.data for j in jpegs], mode=ImageReadMode.RGB, device=self.device
            )
            return decoded
        except RuntimeError:  # the batched call fails whole: find the one image nvJPEG refuses
            return [self._decode_one(jpeg.data) for jpeg in jpegs]

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor:
        try:
            image: torch.Tensor = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
            return image
        except RuntimeError:
            # nvJPEG does not take every file libjpeg does (arithmetic coding, 12-bit); libjpeg read this one at
            # 1/8 scale during preprocessing, so its full decode on the CPU succeeds.
            image = decode_jpeg(data, mode=ImageReadMode.RGB, device="cpu")
            return image.to(self.device)
