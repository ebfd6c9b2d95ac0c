"""Speed-ups applied to a loaded BLIP, each switched by a ``model.*`` config key and each measured in
docs/benchmarks.md before it was kept.

- ``use_sdpa_attention``: transformers' BLIP has only the eager attention (matmul, softmax, matmul) and refuses
  ``attn_implementation="sdpa"``. The vision tower's self-attention over 577 patches is the one place where
  that matters, so its modules are switched to ``torch.nn.functional.scaled_dot_product_attention``
  (fused flash/memory-efficient kernels on GPU and CPU). Same maths; outputs equal to float rounding.
- ``quantize_int8``: dynamic INT8 quantisation of every ``nn.Linear`` (weights int8, activations quantised
  on the fly). CPU only.
- ``compile_model``: ``torch.compile`` on the vision tower and the text decoder, the two modules ``generate``
  calls; compilation happens lazily on the first batch of each shape (the server's warm-up pays for one).
- ``set_threads``: ``torch.set_num_threads``; PyTorch's intra-op thread count is process-wide. Auto (0) is
  one thread per core but one on the CPU (see ``threads_for``).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("captioner.acceleration")


def _sdpa_forward(self: Any, hidden_states: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``BlipAttention.forward`` with one fused kernel; attention weights are not materialised (None)."""
    bsz, tgt_len, embed_dim = hidden_states.size()
    qkv = self.qkv(hidden_states).reshape(bsz, tgt_len, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    context = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
    return self.projection(context.transpose(1, 2).reshape(bsz, tgt_len, embed_dim)), None


def use_sdpa_attention(model: Any) -> int:
    """Switch the vision tower's attention modules to SDPA; returns how many were switched."""
    from transformers.models.blip.modeling_blip import BlipAttention  # transformers loads only with a model

    switched = 0
    for module in model.vision_model.modules():
        # Exactly BlipAttention: a subclass may have changed the maths this reimplements.
        if type(module) is BlipAttention:
            target: Any = module
            target.forward = _sdpa_forward.__get__(module)
            switched += 1
    return switched


def quantize_int8(model: Any) -> Any:
    """Every ``nn.Linear`` as a dynamically quantised INT8 linear (CPU); the model is changed in place."""
    from torch.ao.quantization import quantize_dynamic  # only when int8 is asked for

    quantize: Any = quantize_dynamic  # untyped upstream
    with warnings.catch_warnings():
        # torch.ao's quantised tensors are deprecated in favour of torchao, and warn once per layer; the kernels
        # are still the shipping x86 (fbgemm) ones this option was measured with.
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        return quantize(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def compile_model(model: Any, backend: str = "inductor") -> None:
    """``torch.compile`` the two modules ``generate`` runs; batch size and text length vary, hence dynamic.

    ``backend="eager"`` traces without generating code: tests use it to check the traced model's captions.
    """
    model.vision_model = torch.compile(model.vision_model, dynamic=True, backend=backend)
    model.text_decoder = torch.compile(model.text_decoder, dynamic=True, backend=backend)


def cpu_count() -> int:
    """Cores this process may run on (a container's CPU set, not the host's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_for(num_threads: int, device: torch.device) -> int | None:
    """The intra-op thread count to set, or None to leave PyTorch's default.

    ``0`` (auto) on the CPU leaves one core to the event loop and the image decoders: the model's OpenMP team
    waits at a barrier after every operator, so when any other thread takes one of its cores the whole team
    stalls. On 2 cores that made a batch 10-30x slower (docs/benchmarks.md); one thread fewer costs far less.
    On a GPU the CPU threads only launch kernels, so PyTorch's default stays.
    """
    if num_threads > 0:
        return num_threads
    if device.type != "cpu":
        return None
    return max(1, cpu_count() - 1)


def set_threads(num_threads: int, device: torch.device) -> None:
    """``model.num_threads`` applied: process-wide, so the decoding threads' torch calls follow it too."""
    wanted = threads_for(num_threads, device)
    if wanted is not None and torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
