"""`captioner init-model --size base`: BLIP-base's real architecture, from the config alone (nothing is built)."""

from __future__ import annotations

import pytest

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
