"""Client fixtures: ``connect`` makes each test run against ``Client`` and, driven from the test, ``AsyncClient``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from captioner.client import AsyncClient, Client
from tests.support.client import Blocking, Connect


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
