"""`captioner init-model`: BLIP-base's real architecture and the ladder of sizes, from configs (nothing is built)."""

from __future__ import annotations

import argparse

import pytest

from captioner.cli import build_parser
from captioner.tools.init_model import SIZES, blip_config, build_vocab


def test_base_config_is_blip_base() -> None:
    config = blip_config("base")
    text, vision = config.text_config, config.vision_config
    assert (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers) == (768, 3072, 12)
    assert (vision.num_attention_heads, vision.image_size, vision.patch_size) == (12, 384, 16)
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.num_attention_heads) == (
        768,
        3072,
        12,
        12,
    )
    assert (text.vocab_size, text.bos_token_id, text.sep_token_id, text.pad_token_id) == (30524, 30522, 102, 0)
    assert (text.encoder_hidden_size, text.max_position_embeddings) == (768, 512)
    assert len(build_vocab("base")) == 30522
    for size in SIZES:
        text = blip_config(size).text_config
        assert text.vocab_size == len(build_vocab(size)) + 2 and text.bos_token_id == len(build_vocab(size))
    with pytest.raises(ValueError, match="size"):
        blip_config("huge")


def test_mini_is_between_tiny_and_small_and_the_command_offers_every_size() -> None:
    shapes = {}
    for size in ("tiny", "mini", "small"):
        vision, text = blip_config(size).vision_config, blip_config(size).text_config
        assert (vision.hidden_size, vision.num_hidden_layers) == (text.hidden_size, text.num_hidden_layers)
        shapes[size] = (vision.hidden_size, vision.num_hidden_layers, (vision.image_size // vision.patch_size) ** 2)
    assert shapes["mini"] == (192, 4, 64)  # hidden, layers, patches: docs/training.md states this shape
    assert shapes["tiny"][0] < shapes["mini"][0] < shapes["small"][0]
    assert shapes["mini"][2] < shapes["small"][2]
    assert size_choices() == SIZES  # the command line lists its own copy (it must not import torch)


def size_choices() -> tuple[str, ...]:
    """The ``--size`` choices of ``captioner init-model``, read off the real parser."""
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    init = commands.choices["init-model"]
    return tuple(next(a for a in init._actions if "--size" in a.option_strings).choices or ())
