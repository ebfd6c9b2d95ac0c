"""Training data that needs no model folder: captions cleaned as BLIP cleans them."""

from __future__ import annotations

from captioner.tools.train.data import clean_caption


def test_captions_are_cleaned_as_blip_does() -> None:
    assert clean_caption("  A Dog (brown)  runs; FAST!\n") == "a dog brown runs fast"
    assert clean_caption(" ".join(["word"] * 40)) == " ".join(["word"] * 30)
