"""For the client's tests: ``Blocking`` drives an ``AsyncClient`` from synchronous test code, so that one test body
checks both clients (the ``connect`` fixture, tests/integration/client/conftest.py)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

from captioner.client import AsyncClient

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


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
