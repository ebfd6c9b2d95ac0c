"""Running the app under uvicorn, with a drain on SIGTERM (uvicorn's Config/Server split, extended)."""

from __future__ import annotations

import ipaddress
import logging
import math
import signal
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn

from . import __version__
from .app import create_app
from .config import Settings
from .logs import configure_logging
from .weights import WeightsUnavailable, ensure_weights

logger = logging.getLogger("captioner.server")


class DrainingServer(uvicorn.Server):
    """uvicorn's Server, but SIGTERM/SIGINT first mark the app as draining: /readyz and new requests get 503
    at once, while uvicorn stops accepting, finishes the requests it has, then runs the lifespan shutdown
    (which drains the batcher)."""

    def __init__(self, config: uvicorn.Config, on_exit_signal: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit_signal = on_exit_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            self._on_exit_signal()
        super().handle_exit(sig, frame)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: Settings) -> int:
    """Run until SIGTERM; the exit status is 0 after a clean drain, 1 if the model could not be loaded."""
    log_config = configure_logging(settings.logging.format, settings.logging.level)
    logger.info(
        "starting captioner %s: model %s from %s, config from %s",
        __version__, settings.model.name, settings.model.path, settings.source,
    )  # fmt: skip
    if not settings.auth.api_keys and not is_loopback(settings.server.host):
        logger.warning(
            "listening on %s with no API keys: anyone who can reach this port can use it (set auth.api_keys)",
            settings.server.host,
        )
    try:
        ensure_weights(settings.model)
    except WeightsUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return 1

    server: DrainingServer | None = None
    failed = False

    def fatal() -> None:
        nonlocal failed
        failed = True
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=fatal)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_config=log_config,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(settings.server.drain_timeout_s),
        # "auto" picks uvloop and httptools when they are installed (the [fast] extra).
        loop="auto",
        http="auto",
    )
    server = DrainingServer(config, on_exit_signal=app.state.captioner.start_draining)
    server.run()
    return 1 if failed else 0
