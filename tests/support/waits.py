"""Waiting for a state, never for a time: poll a condition until it holds, with a deadline that only stops a hang.

The deadline never decides a pass (docs/testing.md, "No wall-clock budgets"): on a loaded machine the state
comes later, never wrongly, so the polls are short and the deadline long.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

# Between two looks at the condition: 10 ms at first, then half as long again each time up to 200 ms. A state that
# comes at once is seen at once; a long wait (a drain, a respawn) costs a few looks a second, not a hundred: each
# look may be an HTTP request the server under test has to answer, on the same two cores.
FIRST_POLL_S, POLL_GROWTH, MAX_POLL_S = 0.01, 1.5, 0.2
HANG_S = 60.0  # only against a hang
# An HTTP probe (/readyz, /healthz, /metrics) of a server under test: answered in milliseconds, but its process may
# not get a core for seconds on a loaded machine. A timeout only against a hang, like HANG_S.
PROBE_TIMEOUT_S = 60.0


What = str | Callable[[], str]  # what is awaited, for the failure message (a callable: computed at the deadline)


def wait_for(condition: Callable[[], T], what: What = "the condition", timeout_s: float = HANG_S) -> T:
    """Poll ``condition`` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout_s
    for pause in _pauses():
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(what, timeout_s))
        time.sleep(pause)
    raise AssertionError("unreachable")


async def async_wait_for(
    condition: Callable[[], T | Awaitable[T]], what: What = "the condition", timeout_s: float = HANG_S
) -> T:
    """``wait_for`` on an event loop: the loop runs other tasks between the looks. ``condition`` may be a coroutine
    function (each look awaits it)."""
    deadline = time.monotonic() + timeout_s
    for pause in _pauses():
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(what, timeout_s))
        await asyncio.sleep(pause)
    raise AssertionError("unreachable")


def _pauses() -> Iterator[float]:
    pause = FIRST_POLL_S
    while True:
        yield pause
        pause = min(pause * POLL_GROWTH, MAX_POLL_S)


def _timed_out(what: What, timeout_s: float) -> str:
    return f"timed out after {timeout_s:g} s waiting for {what() if callable(what) else what}"


async def settle() -> None:
    """Let every ready task run until nothing more happens (yields to the loop; no wall-clock time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)
