"""Closing a service (a variant retired by a switch, or the server draining) answers what it accepted.

The switch race: a request is routed to a variant, and while it is still hashing or decoding its image the
registry switch retires that variant. It reaches the batcher after the drain began; it must be captioned there,
not refused with "shutting down" (issue 11's "zero failed requests" across a switch).
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from captioner.model.preprocessing import PreparedImage
from captioner.observability.metrics import Metrics
from captioner.serving.service import CaptionService
from tests.support.fakes import FakeCaptioner
from tests.support.model import tiny_settings
from tests.support.service import GUARD_S

pytestmark = pytest.mark.anyio


class SlowDecode(FakeCaptioner):
    """Preprocessing waits for ``release``: a request held between routing and the batcher."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.decoding = threading.Event()

    def preprocess(self, data: bytes) -> PreparedImage:
        self.decoding.set()
        self.release.wait(GUARD_S)
        return super().preprocess(data)


async def test_a_request_still_decoding_when_its_service_closes_is_answered_not_refused() -> None:
    fake = SlowDecode()
    service = CaptionService(tiny_settings(batching={"max_wait_ms": 0}), fake, Metrics())
    service.start()
    try:
        request = asyncio.create_task(service.caption(b"heron", 1))
        assert await asyncio.to_thread(fake.decoding.wait, GUARD_S)
        closing = asyncio.create_task(service.close(GUARD_S))
        await asyncio.sleep(0.05)
        assert not closing.done()  # waits for the request that has not reached the batcher yet
        fake.release.set()
        outcome = await asyncio.wait_for(request, GUARD_S)
        assert outcome.captions[0].text == "heron"
        assert await asyncio.wait_for(closing, GUARD_S)  # finished in time
    finally:
        fake.release.set()
        await service.close(GUARD_S)


async def test_a_closed_service_with_nothing_in_flight_closes_at_once() -> None:
    service = CaptionService(tiny_settings(), FakeCaptioner(), Metrics())
    service.start()
    assert await asyncio.wait_for(service.close(GUARD_S), 5)
