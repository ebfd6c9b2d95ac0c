"""``pick``: the one-live-variant shortcut answers what the weighted rendezvous would."""

from __future__ import annotations

import pytest

from captioner.serving import variants


def test_one_live_variant_is_picked_without_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [f"image:{n:064x}" for n in range(50)]
    # What the rendezvous scores say for each key, hashing included...
    scored = {key: variants.pick([("a", 1.0), ("b", 0.0), ("c", 0.0)], key) for key in keys}
    assert set(scored.values()) == {"a"}

    def no_hashing(text: str) -> float:
        raise AssertionError("hashed with one live variant")

    monkeypatch.setattr(variants, "_unit_interval", no_hashing)
    # ...and what the shortcut says, without hashing.
    assert all(variants.pick([("a", 1.0), ("b", 0.0), ("c", 0.0)], key) == "a" for key in keys)
    with pytest.raises(AssertionError, match="hashed"):
        variants.pick([("a", 1.0), ("b", 2.0)], keys[0])  # two live variants still go through the scores
    with pytest.raises(ValueError, match="no variant"):
        variants.pick([("a", 0.0)], keys[0])
