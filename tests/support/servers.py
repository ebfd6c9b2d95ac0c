"""Servers in the test's own process: the real app under uvicorn on a background thread (``LiveServer``), any
ASGI app the same way (``AppServer``), and the ways tests start several (``replicas``) or a keyed one."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import uvicorn

from captioner.config import Settings
from tests.support.metrics import metric_value
from tests.support.model import tiny_settings
from tests.support.net import listening_socket
from tests.support.waits import wait_for

API_KEY = "s3cret-key-for-tests"  # the key of ``LiveServer.keyed`` (and of the ``keyed_server`` fixture)
READY_S = 120.0  # only against a hang: the tiny model is ready in a second or two


class _Serving:
    """uvicorn on a thread of this process, on a socket bound before it starts (no port can be taken meanwhile)."""

    def __init__(self, app: Any) -> None:
        self._socket = listening_socket()
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self._socket])), daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def wait_ready(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=READY_S)
        assert not self._thread.is_alive(), "the server thread did not stop"
        self._socket.close()


class LiveServer(_Serving):
    """The real app (real model, real sockets) served by uvicorn on a background thread of this process."""

    def __init__(self, settings: Settings, **app_options: Any) -> None:
        """``app_options`` go to ``create_app`` (a ready model as ``captioner``, an ``on_fatal`` hook)."""
        from captioner.http.app import create_app
        from captioner.observability.metrics import Metrics

        self.settings = settings
        self.metrics = Metrics()
        self.app = create_app(settings, metrics=self.metrics, **app_options)
        super().__init__(self.app)

    @classmethod
    def keyed(cls, model_dir: Path, *keys: str, **sections: dict[str, Any]) -> LiveServer:
        """The tiny model served to callers with one of ``keys`` (``API_KEY`` by default); other settings as given.
        The ``keyed_server`` fixture (tests/conftest.py) is the default one, per module."""
        auth = {"api_keys": list(keys or (API_KEY,)), **sections.pop("auth", {})}
        return cls(tiny_settings(model_dir, auth=auth, **sections))

    def wait_ready(self) -> LiveServer:
        def ready() -> bool:
            assert self._thread.is_alive(), "the server thread ended before it was ready"
            try:
                return httpx.get(self.url + "/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, "the server to be ready", READY_S)
        return self

    def __enter__(self) -> LiveServer:
        self.start()
        return self.wait_ready()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def metric(self, name: str, labels: str = "") -> float:
        """The sum of the series called ``name`` in /metrics whose labels include ``labels`` (0 when none)."""
        return metric_value(httpx.get(self.url + "/metrics", timeout=60).text, name, labels)


class AppServer(_Serving):
    """Any ASGI app (a stand-in for a server the code talks to) served the same way, started when uvicorn is."""

    def wait_ready(self) -> AppServer:
        wait_for(lambda: self.server.started, "the app server to start", READY_S)
        return self

    def __enter__(self) -> AppServer:
        self.start()
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Replica(Protocol):
    def start(self) -> None: ...

    def wait_ready(self) -> Any: ...

    def __exit__(self, *exc: Any) -> None: ...


R = TypeVar("R", bound=Replica)


@contextlib.contextmanager
def replicas(*servers: R) -> Iterator[tuple[R, ...]]:
    """Several servers (``LiveServer`` or ``ServerProcess``), stopped together (in reverse order) whatever happens.

    Server processes start together, so that their model loads overlap. Servers of this process start one after
    the other: transformers' ``from_pretrained`` is not thread-safe (two at once in one process fail with "Cannot
    copy out of meta tensor").
    """
    with contextlib.ExitStack() as stack:
        for server in servers:
            server.start()
            stack.push(server.__exit__)
            if isinstance(server, _Serving):
                server.wait_ready()
        for server in servers:
            if not isinstance(server, _Serving):
                server.wait_ready()
        yield servers
