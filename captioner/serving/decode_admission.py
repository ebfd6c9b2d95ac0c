"""Which queued requests join the running set now (``batching.mode: continuous``): a pure decision.

The running set is bounded in rows (sequences: one per beam), ``max_rows``. Requests join in arrival order while
their rows fit; the first that doesn't fit waits, and so does everything behind it (no overtaking: a wide request
would otherwise starve behind a stream of narrow ones). A request wider than the whole bound joins an empty set
alone, so it is never stuck.
"""

from __future__ import annotations

from collections.abc import Sequence


def admissible(needs: Sequence[int], *, rows_in_use: int, max_rows: int) -> int:
    """How many of the queue's first requests (``needs``: the rows each takes, in queue order) join now."""
    admitted = 0
    used = rows_in_use
    for need in needs:
        if used + need > max_rows and used > 0:
            break
        admitted += 1
        used += need
    return admitted
