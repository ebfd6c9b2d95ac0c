"""atheris harness for the image decoder: client bytes -> ``ImagePreprocessor`` (decode, verify, resize).

The property: whatever the bytes, the preprocessor either returns a finite [3, H, W] tensor or raises one of
the errors the server maps to a 4xx (``InvalidImage``, ``TooLarge``, ``UnsupportedMediaType``). Any other
exception, a hang or a crash is a bug. See fuzz/README.md for how to run it.
"""

from __future__ import annotations

import sys
from typing import Any

SIDE = 64  # a small target keeps each run fast; decoding, the part under test, does not depend on it
MAX_PIXELS = 4_000_000  # the server's pixel check, scaled down so the fuzzer's memory stays small
_preprocessor: Any = None


def _load() -> Any:
    global _preprocessor
    if _preprocessor is None:
        from captioner.model.preprocessing import ImagePreprocessor

        _preprocessor = ImagePreprocessor(
            height=SIDE,
            width=SIDE,
            image_mean=[0.48145466, 0.4578275, 0.40821073],  # BLIP's (CLIP's) normalisation
            image_std=[0.26862954, 0.26130258, 0.27577711],
            max_pixels=MAX_PIXELS,
        )
    return _preprocessor


def run_one(data: bytes) -> str:
    """Decode ``data``; "ok" or the client-error code. Anything else propagates: that is a finding."""
    import torch

    from captioner.errors import InvalidImage, TooLarge, UnsupportedMediaType

    try:
        prepared = _load()(data)
    except (InvalidImage, TooLarge, UnsupportedMediaType) as error:
        return error.code
    pixels = prepared.pixel_values
    if tuple(pixels.shape) != (3, SIDE, SIDE) or pixels.dtype != torch.float32:
        raise AssertionError(f"bad tensor {tuple(pixels.shape)} {pixels.dtype}")
    if not bool(torch.isfinite(pixels).all()):
        raise AssertionError("non-finite pixel values")
    info = prepared.info
    if info.width < 1 or info.height < 1 or info.width * info.height > MAX_PIXELS:
        raise AssertionError(f"bad image info {info}")
    return "ok"


def TestOneInput(data: bytes) -> None:  # the name atheris and libFuzzer look for
    run_one(data)


def main() -> None:
    import atheris

    # Instrument Pillow's pure-Python plugins and our code, so the fuzzer gets coverage feedback from them.
    with atheris.instrument_imports(include=["PIL", "captioner"]):
        import PIL.Image  # noqa: F401

        import captioner.model.preprocessing  # noqa: F401
    _load()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
