"""Test doubles for the batcher: a clock that only moves when told, and a model gated by an asyncio.Event."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


class FakeClock:
    def __init__(self) -> None:
        self.time = 0.0
        self._timers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.time

    async def wait_for_event(self, event: asyncio.Event, timeout: float) -> None:
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timers.append((self.time + timeout, timer))
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            self._timers = [(d, t) for d, t in self._timers if t is not timer]

    async def advance(self, seconds: float) -> None:
        self.time += seconds
        for deadline, timer in self._timers:
            if deadline <= self.time and not timer.done():
                timer.set_result(None)
        await settle()


async def settle() -> None:
    """Let every ready task run until nothing more happens (yields to the loop; no wall-clock time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


class GatedModel:
    """A fake ``run_batch``: records each batch and returns only once ``gate`` is set."""

    def __init__(self, *, open_gate: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        if open_gate:
            self.gate.set()
        self.fail_when: str | None = None  # raise if a batch contains this item
        self.drop_one = False  # return one result too few

    async def __call__(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.fail_when is not None and self.fail_when in items:
            raise RuntimeError("model exploded")
        results = [f"caption of {item}" for item in items]
        return results[:-1] if self.drop_one else results
