"""``captioner optimize --int8``: OUT = the source folder + the INT8 marker, checked by quantising it once.

The check loads the model and quantises it the way the loader will (``acceleration.quantize_int8``), so a folder
that could not be served INT8 is refused here rather than at the server's start, and the card can say how many
linear layers and weights are INT8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from captioner.model.folder_quantization import INT8, write_int8_marker


def write_int8(source: Path, out: Path) -> str:
    """Write the INT8 version of ``source`` to ``out`` (weights, marker, card); returns the one-line summary."""
    import torch
    from transformers import BlipForConditionalGeneration

    from captioner.model.acceleration import quantize_int8
    from captioner.tools.optimize.card import write_optimization_card
    from captioner.tools.optimize.folders import copy_folder, count_parameters

    model: Any = BlipForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
    parameters = count_parameters(model)
    linear_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    quantize_int8(model)
    quantized = [m for m in model.modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__]
    copy_folder(source, out, rewritten=False)
    write_int8_marker(out)
    write_optimization_card(
        out,
        source,
        {
            "method": "int8-dynamic",
            "quantization": INT8,
            "quantized_layers": len(quantized),
            "int8_weights": linear_weights,
            "parameters": {"before": parameters, "after": parameters},
            "storage": "float32 weights + quantization.json: the loader quantises them as it loads (CPU, float32)",
        },
    )
    share = linear_weights / parameters
    return f"INT8: {len(quantized)} linear layers ({linear_weights:,} of {parameters:,} weights, {share:.0%}) at load"
