"""A model folder that asks to be served with INT8 weights: the marker ``captioner optimize --int8`` writes.

The folder keeps its float32 safetensors weights, and ``quantization.json`` beside them says to quantise them
when they are loaded (``acceleration.quantize_int8``: every ``nn.Linear`` dynamically quantised to INT8). Why
not the quantised weights themselves: torch's packed INT8 linear weights are not tensors safetensors can hold
and ``from_pretrained`` cannot read them, whereas the registry hashes ``*.safetensors`` and ``train --base``,
``eval`` and the gate read the folder as a normal BLIP. The quantisation is a deterministic function of the
weights (per-tensor scale from their range), so applying it at every load gives the same INT8 weights each time.

Dynamic INT8 runs on the CPU in float32 only (fbgemm kernels): on any other device or dtype the loader serves
the float32 weights and logs a warning, so one folder runs everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

QUANTIZATION_FILE = "quantization.json"
INT8 = {"method": "dynamic", "dtype": "qint8", "modules": ["Linear"]}


def write_int8_marker(folder: Path) -> Path:
    path = folder / QUANTIZATION_FILE
    path.write_text(json.dumps(INT8, indent=2) + "\n", encoding="utf-8")
    return path


def folder_quantization(folder: str | Path) -> str:
    """``"int8"`` when ``folder`` holds the marker, else ``"none"`` (the values of ``model.quantize``)."""
    path = Path(folder) / QUANTIZATION_FILE
    if not path.is_file():
        return "none"
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable quantisation marker ({exc})") from exc
    if marker != INT8:
        raise ValueError(f"{path}: unknown quantisation {marker!r} (this version applies {INT8!r})")
    return "int8"
