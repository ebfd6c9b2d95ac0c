"""Which of a model folder's generation options continuous decoding would ignore (and says so at start-up)."""

from __future__ import annotations

from transformers import GenerationConfig

from captioner.model.generation_options import unsupported_generation_options


def test_defaults_are_all_supported_and_set_options_it_does_not_apply_are_named() -> None:
    assert unsupported_generation_options(GenerationConfig()) == []
    assert unsupported_generation_options(GenerationConfig(early_stopping=True, length_penalty=0.5)) == []
    config = GenerationConfig(no_repeat_ngram_size=3, max_new_tokens=5, bad_words_ids=[[7]])
    assert unsupported_generation_options(config) == ["no_repeat_ngram_size", "bad_words_ids", "max_new_tokens"]
