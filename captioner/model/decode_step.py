"""BLIP's text decoder, run one step at a time over rows that started at different steps.

transformers' decoder keeps one KV cache for a batch whose rows all started together. Here each row has its own
history: the self-attention cache is left-padded (a row's ``fed`` tokens are the last ``fed`` columns; the rest
are masked out) and each row's position is its own length, so images that joined at different steps share one
batched forward. Rows come in blocks of ``width`` beams per image; the cross-attention keys of the image tokens
are held once per image (every beam of an image reads the same image), so a beam reorder never copies them.

The maths is transformers' eager BLIP text attention (5.x): ``softmax(q k^T / sqrt(d) + mask) v``, the same
modules for the projections, layer norms and feed-forward; outputs equal a batched ``generate``'s to float
rounding (padding adds exact zeros, but summation order can differ with the batch's shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ImageKeys:
    """Each layer's cross-attention keys and values, one entry per image: ``[images, heads, tokens, head_dim]``."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def images(self) -> int:
        return int(self.keys[0].shape[0])

    def select(self, index: torch.Tensor) -> ImageKeys:
        return ImageKeys([k.index_select(0, index) for k in self.keys], [v.index_select(0, index) for v in self.values])

    @staticmethod
    def concat(parts: list[ImageKeys]) -> ImageKeys:
        if len(parts) == 1:
            return parts[0]
        layers = range(len(parts[0].keys))
        return ImageKeys(
            [torch.cat([p.keys[i] for p in parts]) for i in layers],
            [torch.cat([p.values[i] for p in parts]) for i in layers],
        )


class ImagePool:
    """The image keys of a block's images, one slot each, so that images joining and leaving copy only their own
    keys (the keys are big: every layer's keys and values of every image token, 7 MiB an image for the small
    model). A joining image's keys go into the next free slot (the pool doubles when full); a leaving image's slot
    is only marked free, and the pool is compacted (the live slots copied, in order) once free slots outnumber the
    live ones, which bounds the cross-attention spent on free slots to the live ones' (``_attend_image``)."""

    def __init__(self, keys: ImageKeys) -> None:
        self._keys = keys
        self.used = keys.images  # slots handed out so far (live or freed); the pool's first ``used`` slots
        self.slots: list[int] = list(range(self.used))  # the live images' slots, increasing (the block's order)

    @property
    def view(self) -> ImageKeys:
        return ImageKeys([k[: self.used] for k in self._keys.keys], [v[: self.used] for v in self._keys.values])

    def live_index(self) -> torch.Tensor | None:
        """The live slots among the used ones, or None when every used slot is live (no scatter needed)."""
        if len(self.slots) == self.used:
            return None
        return torch.tensor(self.slots, device=self._keys.keys[0].device)

    def append(self, keys: ImageKeys) -> None:
        count, capacity = keys.images, self._keys.images
        if self.used + count > capacity:
            grown = max(2 * capacity, self.used + count)
            self._keys = ImageKeys(
                [_grow(k, self.used, grown) for k in self._keys.keys],
                [_grow(v, self.used, grown) for v in self._keys.values],
            )
        for pool, new in zip(self._keys.keys + self._keys.values, keys.keys + keys.values, strict=True):
            pool[self.used : self.used + count].copy_(new)
        self.slots += range(self.used, self.used + count)
        self.used += count

    def keep(self, kept: list[int]) -> None:
        """Only the images at these positions (in the block's order) stay."""
        self.slots = [self.slots[i] for i in kept]
        if len(self.slots) * 2 < self.used:
            index = torch.tensor(self.slots, device=self._keys.keys[0].device)
            self._keys = self._keys.select(index)
            self.used = len(self.slots)
            self.slots = list(range(self.used))


def _grow(tensor: torch.Tensor, used: int, capacity: int) -> torch.Tensor:
    grown = tensor.new_empty((capacity, *tensor.shape[1:]))
    grown[:used].copy_(tensor[:used])
    return grown


@dataclass
class RowCache:
    """Each layer's self-attention keys and values, ``[rows, heads, columns, head_dim]``, left-padded: row ``r``'s
    ``fed[r]`` tokens are its last columns."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    fed: torch.Tensor  # [rows], long

    @property
    def columns(self) -> int:
        return int(self.keys[0].shape[2])

    def select(self, index: torch.Tensor) -> RowCache:
        """These rows (beam reorder, rows leaving), with the columns no kept row uses dropped."""
        fed = self.fed.index_select(0, index.to(self.fed.device))
        drop = self.columns - int(fed.max()) if fed.numel() else 0
        index = index.to(self.keys[0].device)
        return RowCache(
            [k.index_select(0, index)[:, :, drop:] for k in self.keys],
            [v.index_select(0, index)[:, :, drop:] for v in self.values],
            fed,
        )

    @staticmethod
    def concat(parts: list[RowCache]) -> RowCache:
        """Rows of several caches in one, the shorter ones padded on the left."""
        if len(parts) == 1:
            return parts[0]
        columns = max(p.columns for p in parts)
        layers = range(len(parts[0].keys))

        def padded(t: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, 0, columns - t.shape[2], 0))

        return RowCache(
            [torch.cat([padded(p.keys[i]) for p in parts]) for i in layers],
            [torch.cat([padded(p.values[i]) for p in parts]) for i in layers],
            torch.cat([p.fed for p in parts]),
        )


class TextDecoder:
    """The decoder of one loaded ``BlipForConditionalGeneration``; every call is under ``torch.inference_mode``."""

    def __init__(self, model: Any) -> None:
        decoder = model.text_decoder
        self._embeddings: Any = decoder.bert.embeddings
        self._layers: list[Any] = list(decoder.bert.encoder.layer)
        self._head: Any = decoder.cls
        first = self._layers[0].attention.self
        self._heads = int(first.num_attention_heads)
        self._head_dim = int(first.attention_head_size)

    def _split(self, states: torch.Tensor, linear: Any) -> torch.Tensor:
        """``[rows, tokens, hidden]`` through ``linear``, as ``[rows, heads, tokens, head_dim]``."""
        rows, tokens = states.shape[:2]
        projected: torch.Tensor = linear(states)
        return projected.view(rows, tokens, self._heads, self._head_dim).transpose(1, 2)

    @torch.inference_mode()
    def image_keys(self, image_embeds: torch.Tensor) -> ImageKeys:
        keys, values = [], []
        for layer in self._layers:
            cross = layer.crossattention.self
            keys.append(self._split(image_embeds, cross.key))
            values.append(self._split(image_embeds, cross.value))
        return ImageKeys(keys, values)

    @torch.inference_mode()
    def prefill(self, prompt_ids: torch.Tensor, images: ImageKeys) -> tuple[torch.Tensor, RowCache]:
        """The prompt (``[images, prompt_len]``, one row per image) fed whole: the logits after it, and its cache."""
        rows, length = prompt_ids.shape
        dtype = self._embeddings.word_embeddings.weight.dtype
        empty = torch.empty(rows, self._heads, 0, self._head_dim, device=prompt_ids.device, dtype=dtype)
        cache = RowCache([empty] * len(self._layers), [empty] * len(self._layers), torch.zeros(rows, dtype=torch.long))
        positions = torch.arange(length, device=prompt_ids.device).expand(rows, -1)
        return self._forward(prompt_ids, positions, cache, images, width=1)

    @torch.inference_mode()
    def step(
        self, tokens: torch.Tensor, cache: RowCache, images: ImagePool, width: int
    ) -> tuple[torch.Tensor, RowCache]:
        """One token per row (``[rows]``), each at its row's own position: the next logits and the longer cache."""
        positions = cache.fed.to(tokens.device).unsqueeze(1)
        return self._forward(tokens.unsqueeze(1), positions, cache, images.view, width, images.live_index())

    def _forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        cache: RowCache,
        images: ImageKeys,
        width: int,
        slots: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, RowCache]:
        hidden = self._embeddings(input_ids=ids, position_ids=positions)
        new_tokens = ids.shape[1]
        mask = _self_attention_mask(cache.fed, cache.columns, new_tokens, hidden.dtype, hidden.device)
        keys, values = [], []
        for index, layer in enumerate(self._layers):
            attention = layer.attention.self
            query = self._split(hidden, attention.query)
            key = torch.cat([cache.keys[index], self._split(hidden, attention.key)], dim=2)
            value = torch.cat([cache.values[index], self._split(hidden, attention.value)], dim=2)
            keys.append(key)
            values.append(value)
            attended = layer.attention.output(self._merge(_attend(query, key, value, mask)), hidden)
            cross = layer.crossattention.self
            context = _attend_image(self._split(attended, cross.query), images, index, width, slots)
            crossed = layer.crossattention.output(self._merge(context), attended)
            hidden = layer.feed_forward_chunk(crossed)
        logits = self._head(hidden[:, -1:, :])[:, -1, :]
        return logits, RowCache(keys, values, cache.fed + new_tokens)

    def _merge(self, context: torch.Tensor) -> torch.Tensor:
        """``[rows, heads, tokens, head_dim]`` back to ``[rows, tokens, hidden]``."""
        rows, _, tokens, _ = context.shape
        return context.transpose(1, 2).reshape(rows, tokens, self._heads * self._head_dim)


def _self_attention_mask(
    fed: torch.Tensor, columns: int, new_tokens: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Additive ``[rows, 1, new_tokens, columns + new_tokens]``: a row sees its own past and the new tokens up to
    itself (causal); the left padding is masked with the dtype's minimum, as transformers' eager mask does."""
    total = columns + new_tokens
    column = torch.arange(total, device=device)
    first_valid = (columns - fed.to(device)).unsqueeze(1)  # [rows, 1]
    valid = column.unsqueeze(0) >= first_valid  # [rows, total]
    query_at = columns + torch.arange(new_tokens, device=device)  # each new token's column
    causal = column.unsqueeze(0) <= query_at.unsqueeze(1)  # [new_tokens, total]
    allowed = valid.unsqueeze(1) & causal.unsqueeze(0)  # [rows, new_tokens, total]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(query.shape[-1])
    probs = torch.softmax(scores + mask, dim=-1)
    return torch.matmul(probs, value)


def _attend_image(
    query: torch.Tensor, images: ImageKeys, layer: int, width: int, slots: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-attention: the ``width`` beams of each image (consecutive rows) attend to that image's tokens.
    ``slots``: where each image's keys are among ``images`` (None: image ``i`` is entry ``i``); the queries are
    spread over every entry (zeros for the free ones, whose results are dropped) rather than copying keys."""
    rows, heads, tokens, head_dim = query.shape
    count = rows // width
    grouped = query.view(count, width, heads, tokens, head_dim).transpose(1, 2).reshape(count, heads, -1, head_dim)
    if slots is not None:
        spread = grouped.new_zeros((images.images, *grouped.shape[1:]))
        grouped = spread.index_copy_(0, slots, grouped)
    scores = torch.matmul(grouped, images.keys[layer].transpose(-1, -2)) / math.sqrt(head_dim)
    context = torch.matmul(torch.softmax(scores, dim=-1), images.values[layer])
    if slots is not None:
        context = context.index_select(0, slots)
    return context.view(count, heads, width, tokens, head_dim).transpose(1, 2).reshape(rows, heads, tokens, head_dim)
