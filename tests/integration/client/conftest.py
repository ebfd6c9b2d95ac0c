"""Client fixtures: ``connect`` makes each test run against ``Client`` and, driven from the test, ``AsyncClient``."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from captioner.client import AsyncClient, Client

MODEL = "test/tiny-blip"
Connect = Callable[..., Any]


class Blocking:
    """An ``AsyncClient`` driven from synchronous test code, on one event loop for all its calls."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._runner = asyncio.Runner()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._runner.run(method(*args, **kwargs))

    def close(self) -> None:
        self._runner.run(self._client.aclose())
        self._runner.close()


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """``connect(url, **options)``: a Client, or an AsyncClient behind ``Blocking``; closed after the test."""
    opened: list[Any] = []

    def make(url: str, **options: Any) -> Any:
        client = Client(url, **options) if request.param == "sync" else Blocking(AsyncClient(url, **options))
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
