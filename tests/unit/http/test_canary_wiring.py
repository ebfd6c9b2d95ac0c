"""The canary analysis finds the feedback store's per-variant approval on the app state, or works without it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from captioner.http.lifespan import feedback_source


class Stats:
    def approval(self, variant: str) -> tuple[int, float]:
        return (4, 0.75)


def test_the_feedback_stats_are_found_where_the_feedback_store_keeps_them() -> None:
    stats = Stats()
    found = feedback_source(cast(Any, SimpleNamespace(feedback=SimpleNamespace(stats=stats))))
    assert found is stats and found.approval("canary") == (4, 0.75)
    assert feedback_source(cast(Any, SimpleNamespace(feedback_stats=stats))) is stats
    assert feedback_source(cast(Any, SimpleNamespace())) is None  # no feedback store: approval is left out
    assert feedback_source(cast(Any, SimpleNamespace(feedback=SimpleNamespace(stats=None)))) is None
