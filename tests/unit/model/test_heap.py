from __future__ import annotations

import gc
import weakref

from captioner.model import heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_settle_freezes_what_lives_and_a_later_settle_frees_what_was_let_go() -> None:
    try:
        node = _Node()
        alive = weakref.ref(node)
        heap.settle()
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert alive() is not None  # frozen: full collections skip it (the point: they skip the model too)
        heap.settle()  # as after a replaced model is let go
        assert alive() is None
    finally:
        gc.unfreeze()
