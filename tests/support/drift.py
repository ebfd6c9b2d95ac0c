"""Traffic for the drift tests: short generation (the drift features do not depend on the captions' quality) and
many uploads at once through real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx

CAPTION = "/api/v1/caption"
FAST = {"num_beams": 1, "max_length": 6, "min_length": 1}  # generation settings: drift tests need many captions


def send(url: str, uploads: Sequence[tuple[bytes, str]], *, concurrency: int = 32) -> None:
    """POST every ``(bytes, content type)`` upload to the server at ``url``, ``concurrency`` at a time; all 200."""

    async def run() -> None:
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=120) as client:

            async def one(data: bytes, content_type: str) -> None:
                async with gate:
                    response = await client.post(url + CAPTION, content=data, headers={"Content-Type": content_type})
                    assert response.status_code == 200, response.text

            await asyncio.gather(*(one(*upload) for upload in uploads))

    asyncio.run(run())
