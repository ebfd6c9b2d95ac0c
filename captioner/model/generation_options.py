"""What a model folder's generation config asks of continuous decoding (decode_engine.py): the decoder's own
``early_stopping``, and the options the step-by-step search does not apply (static mode's ``generate`` would), so
that start-up can say so instead of answering differently in silence."""

from __future__ import annotations

from typing import Any


def early_stopping_of(model: Any) -> bool | str:
    """The decoder's own ``generation_config.early_stopping`` (generate's default when the call doesn't set it)."""
    value = getattr(model.text_decoder.generation_config, "early_stopping", False)
    return value if value == "never" else bool(value)


# Generation options a model folder's generation_config.json may set that the step-by-step search does not apply
# (static mode's generate would): their "off" values.
_UNSUPPORTED_OFF: dict[str, Any] = {
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "force_words_ids": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
    "min_new_tokens": (None, 0),
    "max_new_tokens": (None,),
    "num_beam_groups": (None, 1),
    "diversity_penalty": (None, 0.0),
    "renormalize_logits": (None, False),
}


def unsupported_generation_options(config: Any) -> list[str]:
    """The options set in ``config`` that continuous decoding would ignore."""
    return [name for name, off in _UNSUPPORTED_OFF.items() if getattr(config, name, None) not in off]
