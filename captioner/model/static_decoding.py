"""``model.kv_cache: static``: fixed-shape KV caches for BLIP's ``generate``, so each decoding step can be one
compiled graph (with ``model.compile: true``; CUDA graphs on a GPU).

transformers' ``cache_implementation="static"`` does not work for BLIP (5.24): generate builds a bare
``StaticCache``, and BLIP's text encoder wraps only a ``DynamicCache`` into the ``EncoderDecoderCache`` its
cross-attention needs, so the cross-attention writes the image's 577 keys into the self-attention cache and
fails (``index_copy_(): index 19 is out of bounds for dimension 2 with size 19``; see
tests/unit/model/test_gpu_options.py). Handing generate our own ``EncoderDecoderCache`` works:

- self-attention: ``StaticCache`` of ``max_length`` tokens (the prompt and every generated token fit), reordered
  after each beam-search step in place (transformers' ``index_select`` makes new tensors, whose new addresses
  a compiled graph, and CUDA graphs above all, would treat as new inputs);
- cross-attention: ``ImageKeysCache``, a ``StaticCache`` the size of the image's tokens, filled at the first step.
  Beam search reorders every cache after every step; all beams of one image hold the same image keys, so
  reordering them changes nothing and only copies them (with a dynamic cache: every layer's full [batch x beams,
  heads, 577, 64] keys and values, at every step). This one skips that copy.

transformers compiles the decoding step by itself only for greedy search and sampling (``_sample``); beam search
calls the module directly. So ``acceleration.compile_model`` compiles the text decoder's ``forward`` in place,
with static shapes under this cache and ``mode="reduce-overhead"`` (CUDA graphs) on a GPU: one graph for the
prompt and one for every later step, per batch size. Captions are the dynamic cache's exactly (only where the
keys live changes; tests/unit/model/test_gpu_options.py).

Shapes: batches are padded to the next power of two (``padded_size``) and the padding's captions dropped, so
there are at most log2(max batch) + 1 sizes to compile instead of one per size.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import EncoderDecoderCache, StaticCache


def padded_size(size: int) -> int:
    """The batch size a batch of ``size`` images runs at: the next power of two."""
    return 1 << max(0, size - 1).bit_length()


class TextKeysCache(StaticCache):  # type: ignore[misc]
    """The self-attention cache, reordered in place so its tensors keep their addresses."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        layer: Any
        for layer in self.layers:
            if layer.is_initialized:
                index = beam_idx.to(layer.keys.device)
                layer.keys.copy_(layer.keys.index_select(0, index))
                layer.values.copy_(layer.values.index_select(0, index))


class ImageKeysCache(StaticCache):  # type: ignore[misc]
    """The cross-attention cache: every beam of an image attends to the same image, so never reordered."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        pass


def image_tokens(model: Any) -> int:
    """How many tokens the vision tower gives the text decoder: one per patch, plus the class token."""
    vision = model.config.vision_config
    return int((vision.image_size // vision.patch_size) ** 2 + 1)


def new_cache(model: Any, *, max_length: int) -> Any:
    """A fresh cache for one generate call (a cache holds one call's batch); pass it as ``generate(cache=...)``."""
    text_config = model.config.text_config
    return EncoderDecoderCache(
        TextKeysCache(config=text_config, max_cache_len=max_length),
        ImageKeysCache(config=text_config, max_cache_len=image_tokens(model)),
    )
