"""Speed-ups applied to a loaded BLIP, each switched by a ``model.*`` config key and each measured in
docs/benchmarks.md before it was kept.

- ``use_sdpa_attention``: transformers' BLIP has only the eager attention (matmul, softmax, matmul) and refuses
  ``attn_implementation="sdpa"``. Both towers' attention modules are switched to
  ``torch.nn.functional.scaled_dot_product_attention`` (fused flash/memory-efficient kernels): the vision
  tower's self-attention over 577 patches everywhere, and on a GPU also the text decoder's self- and
  cross-attention (the cross-attention reads all 577 image tokens at every step of every beam). On the CPU
  the text tower's SDPA measured no gain (CPU time of one thread, interleaved runs: tiny model -1 to -4 %,
  small -4 %: one query token against at most 20 keys is too small for the fused kernel), so it stays eager
  there. Same maths, the same additive mask; outputs equal to float rounding.
- ``quantize_int8``: dynamic INT8 quantisation of every ``nn.Linear`` (weights int8, activations quantised
  on the fly). CPU only.
- ``compile_model``: ``torch.compile`` on the vision tower and the text decoder, the two modules ``generate``
  calls; compilation happens lazily on the first batch of each shape (the server's warm-up pays for one).
- ``set_threads``: ``torch.set_num_threads``; PyTorch's intra-op thread count is process-wide. Auto (0) is
  one thread per core but one on the CPU (see ``threads_for``).
"""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.blip.modeling_blip import BlipAttention
from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

logger = logging.getLogger("captioner.acceleration")


def _sdpa_forward(self: Any, hidden_states: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``BlipAttention.forward`` with one fused kernel; attention weights are not materialised (None)."""
    bsz, tgt_len, embed_dim = hidden_states.size()
    qkv = self.qkv(hidden_states).reshape(bsz, tgt_len, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    context = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
    return self.projection(context.transpose(1, 2).reshape(bsz, tgt_len, embed_dim)), None


def _text_sdpa_forward(
    self: Any,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``BlipTextSelfAttention.forward`` (transformers 5.x, KV cache included) with one fused kernel."""
    head_size = self.attention_head_size
    query = self.query(hidden_states).view(*hidden_states.shape[:-1], -1, head_size).transpose(1, 2)
    is_cross = encoder_hidden_states is not None
    mask = encoder_attention_mask if is_cross else attention_mask
    is_updated, layer_cache = False, cache
    if isinstance(cache, EncoderDecoderCache):
        is_updated = bool(cache.is_updated.get(self.layer_idx))
        layer_cache = cache.cross_attention_cache if is_cross else cache.self_attention_cache
    if is_cross and cache is not None and is_updated:  # the image's keys and values, computed at the first step
        key, value = layer_cache.layers[self.layer_idx].keys, layer_cache.layers[self.layer_idx].values
    else:
        states = encoder_hidden_states if encoder_hidden_states is not None else hidden_states
        key = self.key(states).view(*states.shape[:-1], -1, head_size).transpose(1, 2)
        value = self.value(states).view(*states.shape[:-1], -1, head_size).transpose(1, 2)
        if cache is not None:
            key, value = layer_cache.update(key, value, self.layer_idx, kwargs=kwargs)
            if is_cross and isinstance(cache, EncoderDecoderCache):
                cache.is_updated[self.layer_idx] = True
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(query.dtype)
    context = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    return context.transpose(1, 2).reshape(*hidden_states.shape[:-1], self.all_head_size), None


def _text_attention_is_known() -> bool:
    """Whether the installed BLIP text attention is the one ``_text_sdpa_forward`` reimplements."""
    return "cache" in inspect.signature(BlipTextSelfAttention.forward).parameters


def use_sdpa_attention(model: Any, *, text: bool = True) -> int:
    """Switch the vision tower's (and with ``text``, the text decoder's) attention modules to SDPA; returns how
    many were switched."""
    if text and not _text_attention_is_known():
        text = False
        logger.warning("this transformers' BLIP text attention is not the one known here: it stays eager")
    switched = 0
    for module in model.modules():
        # Exactly these classes: a subclass may have changed the maths this reimplements.
        target: Any = module
        if type(module) is BlipAttention:
            target.forward = _sdpa_forward.__get__(module)
            switched += 1
        elif text and type(module) is BlipTextSelfAttention:
            target.forward = _text_sdpa_forward.__get__(module)
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


def compile_model(model: Any, backend: str = "inductor", *, static_shapes: bool = False) -> None:
    """``torch.compile`` the vision tower and the text decoder's forward, the two things ``generate`` runs.

    ``generate`` reaches the decoder through ``text_decoder.generate``, which calls the module itself, so wrapping
    the module (``torch.compile(module)`` returns an ``OptimizedModule`` whose attributes, ``generate``
    included, are the original's) would leave every decoding step uncompiled: the forward is compiled in place.
    ``static_shapes`` (with ``model.kv_cache: static``): one graph per batch size, and on a GPU
    ``mode="reduce-overhead"``, i.e. CUDA graphs; else shapes are dynamic (the cache grows every step).
    ``backend="eager"`` traces without generating code: tests use it to check the traced model's captions.
    """
    on_gpu = next(model.parameters()).device.type == "cuda"
    mode = "reduce-overhead" if static_shapes and on_gpu and backend == "inductor" else None
    # Padded batch sizes (static_decoding.padded_size) x (prompt step, later steps): more graphs than the default
    # limit of 8 recompilations, after which dynamo would silently fall back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    model.vision_model = torch.compile(model.vision_model, dynamic=True, backend=backend)
    decoder = model.text_decoder
    decoder.forward = torch.compile(decoder.forward, dynamic=not static_shapes, backend=backend, mode=mode)


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
