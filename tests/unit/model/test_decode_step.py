"""The decoder's per-row pieces without a model (captioner/model/decode_step.py): the image-key pool that images
join and leave without copying the others' keys, cross-attention over a pool with free slots, the left-padded
self-attention mask, and the row cache's reorder and padding."""

from __future__ import annotations

import torch

from captioner.model.decode_step import ImageKeys, ImagePool, RowCache, _attend_image, _self_attention_mask


def keys_of(*images: float) -> ImageKeys:
    """One layer; each image's keys and values filled with its own number (heads 2, tokens 3, head_dim 4)."""
    keys = torch.stack([torch.full((2, 3, 4), float(value)) for value in images])
    return ImageKeys([keys], [keys.clone() + 0.5])


def numbers(pool: ImagePool) -> list[float]:
    view = pool.view
    return [float(view.keys[0][slot, 0, 0, 0]) for slot in pool.slots]


def test_images_join_and_leave_the_pool_in_order_and_it_compacts_once_mostly_free() -> None:
    pool = ImagePool(keys_of(1, 2))
    pool.append(keys_of(3, 4, 5))
    assert numbers(pool) == [1, 2, 3, 4, 5] and pool.used == 5
    pool.keep([0, 2, 3])  # 2 and 5 leave: their slots are only marked free
    assert numbers(pool) == [1, 3, 4] and pool.used == 5 and pool.live_index() is not None
    pool.keep([1])  # one live of five used: compacted
    assert numbers(pool) == [3] and pool.used == 1 and pool.live_index() is None
    pool.append(keys_of(6))
    assert numbers(pool) == [3, 6]


def test_cross_attention_over_a_pool_with_free_slots_equals_over_the_live_images_alone() -> None:
    torch.manual_seed(0)
    width, heads, head_dim = 3, 2, 4
    images = ImageKeys([torch.randn(5, heads, 7, head_dim)], [torch.randn(5, heads, 7, head_dim)])
    live = torch.tensor([0, 2, 3])
    query = torch.randn(len(live) * width, heads, 1, head_dim)
    spread = _attend_image(query, images, 0, width, live)
    alone = _attend_image(query, images.select(live), 0, width)
    torch.testing.assert_close(spread, alone)


def test_a_row_sees_its_own_tokens_only_never_the_left_padding() -> None:
    mask = _self_attention_mask(
        torch.tensor([2, 4]), columns=4, new_tokens=1, dtype=torch.float32, device=torch.device("cpu")
    )
    seen = (mask[:, 0, 0] == 0).tolist()
    assert seen == [[False, False, True, True, True], [True, True, True, True, True]]


def test_the_row_cache_reorders_rows_and_pads_the_shorter_on_the_left() -> None:
    def cache(rows: int, columns: int, value: float) -> RowCache:
        tensor = torch.full((rows, 1, columns, 2), value)
        return RowCache([tensor], [tensor.clone()], torch.full((rows,), columns))

    joined = RowCache.concat([cache(2, 3, 1.0), cache(1, 1, 2.0)])
    assert joined.columns == 3 and joined.fed.tolist() == [3, 3, 1]
    assert joined.keys[0][2, 0, :, 0].tolist() == [0.0, 0.0, 2.0]  # left-padded
    picked = joined.select(torch.tensor([2, 2]))
    assert picked.columns == 1 and picked.fed.tolist() == [1, 1]  # columns no kept row uses are dropped
