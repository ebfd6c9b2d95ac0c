"""Running the app under uvicorn, with a drain on SIGTERM (uvicorn's Config/Server split, extended)."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

from captioner import __version__
from captioner.config import ConfigError, Settings
from captioner.guard.admission import admission_capacity
from captioner.http.app import create_app
from captioner.model.weights import WeightsUnavailable
from captioner.observability.logs import configure_logging
from captioner.runtime.components import fetch_weights
from captioner.runtime.header_limits import MAX_HEAD_BYTES, http_protocol

logger = logging.getLogger("captioner.server")


class DrainingServer(uvicorn.Server):
    """uvicorn's Server with a drain phase in front of its shutdown.

    On the first SIGTERM/SIGINT the app is marked draining, so /readyz and new requests get 503 at once, but the
    server keeps listening: a load balancer must be able to see those 503s (a closed port looks like a crash and
    the requests in flight would be cut). Once no request is in flight, or ``drain_timeout_s`` has passed,
    uvicorn's own shutdown runs: stop listening, close idle connections, then the lifespan shutdown (which stops
    the batcher). A second signal cuts the drain short. If requests are still in flight at the deadline, the
    process exits at once with status 1.

    Unlike uvicorn, the signal is not re-raised after a clean shutdown: a finished drain exits with status 0.
    """

    def __init__(self, config: uvicorn.Config, on_exit_signal: Callable[[], None], drain_timeout_s: float) -> None:
        super().__init__(config)
        self._on_exit_signal = on_exit_signal
        self._drain_timeout_s = drain_timeout_s
        self._drain_deadline: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def in_flight(self) -> int:
        """HTTP requests whose response is not finished (uvicorn keeps one task per request)."""
        return len(self.server_state.tasks)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def drain(self) -> None:
        """Start the drain, as a first SIGTERM would, from the event loop's thread (a fatal model error)."""
        if self._drain_deadline is not None or self.should_exit:
            return
        if self._loop is None:  # not serving yet: nothing was accepted, nothing to drain
            self.should_exit = True
            return
        self._drain_deadline = time.monotonic() + self._drain_timeout_s
        self._on_exit_signal()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
            return
        if self._drain_deadline is None and not self.should_exit:
            self._drain_deadline = time.monotonic() + self._drain_timeout_s
            if self._loop is not None:
                # We are in a signal handler: hand the work to the event loop rather than do it here.
                self._loop.call_soon_threadsafe(self._on_exit_signal)
            else:  # not serving yet: nothing was accepted, nothing to drain
                self.should_exit = True
            return
        self.should_exit = True
        self.force_exit = True  # a second signal: stop waiting

    async def on_tick(self, counter: int) -> bool:
        if self._drain_deadline is not None and not self.should_exit:
            if self.in_flight == 0:
                logger.info("drained: no request in flight; shutting down")
                self.should_exit = True
            elif time.monotonic() >= self._drain_deadline:
                logger.warning(
                    "drain timed out after %.0f s with %d requests in flight", self._drain_timeout_s, self.in_flight
                )
                # Leave now. A graceful shutdown would cancel those requests (a traceback each, in the log) and
                # then wait at interpreter exit for the model thread, which a stuck generate() holds for ever.
                logging.shutdown()
                os._exit(1)
        return await super().on_tick(counter)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve a non-loopback address with no API keys, unless ``auth.allow_anonymous`` says so on purpose.

    An open replica is an open GPU, URL fetcher and job store for anyone who can reach the port.
    """
    auth = settings.auth
    if auth.api_keys or auth.admin_keys or auth.keys_file or auth.allow_anonymous or is_loopback(settings.server.host):
        return
    raise ConfigError(
        f"config: server.host is {settings.server.host}, which other machines can reach, and auth.api_keys is empty: "
        "set auth.api_keys (e.g. CAPTIONER_AUTH__API_KEYS='[\"sha256:<hex>\"]'), listen on 127.0.0.1, or set "
        "auth.allow_anonymous: true to serve without keys on purpose"
    )


def connection_limit(settings: Settings) -> int:
    """``server.limit_concurrency``, or when 0: four connections per admission ticket, plus room for probes."""
    return settings.server.limit_concurrency or 4 * admission_capacity(settings) + 64


def serve(settings: Settings, reload_settings: Callable[[], Settings] | None = None, role: str = "all") -> int:
    """Run until SIGTERM. Exit status: 0 after a clean drain; 1 if the model failed to load, failed for good while
    serving (a CUDA error: drained like a SIGTERM first), or the drain timed out.

    ``role``: ``all`` (accept and caption), ``api`` (accept and answer; never loads a model), ``worker``
    (captions the job queue; serves only health, readiness and metrics). Raises ``ConfigError`` (the CLI prints
    it as one line, exit status 2) for an exposed server without keys."""
    check_exposure(settings)
    log_config = configure_logging(settings.logging.format, settings.logging.level)
    logger.info(
        "starting captioner %s (role %s): model %s from %s, config from %s",
        __version__, role, settings.model.name, settings.model.path, settings.source,
        extra={"version": __version__, "role": role, "model": settings.model.name, "model_path": settings.model.path,
               "device": settings.model.device, "dtype": settings.model.dtype, "config_source": settings.source,
               "host": settings.server.host, "port": settings.server.port},
    )  # fmt: skip
    if not settings.auth.api_keys and not is_loopback(settings.server.host):  # allow_anonymous: on purpose
        logger.warning(
            "listening on %s with no API keys (auth.allow_anonymous): anyone who can reach this port can use it",
            settings.server.host,
            extra={"event": "no_auth", "host": settings.server.host},
        )
    server: DrainingServer | None = None
    failed = False

    def fatal() -> None:
        nonlocal failed
        failed = True
        if server is not None:
            server.drain()

    app = create_app(settings, on_fatal=fatal, reload_settings=reload_settings, role=role)
    try:
        fetch_weights(app.state.captioner)  # weights first (a download, maybe), then bind the port
    except WeightsUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return 1
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_config=log_config,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(settings.server.drain_timeout_s),
        # "auto" picks uvloop when it is installed (the [fast] extra).
        loop="auto",
        # httptools (from [fast]) with a cap on header bytes, which plain httptools lacks; else h11 with the same cap.
        # Either way each request head must arrive within limits.header_timeout_s.
        http=http_protocol(settings.limits.header_timeout_s),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        # Connections (idle ones too) served at once; past it, requests get 503.
        limit_concurrency=connection_limit(settings),
        # X-Forwarded-For is believed from these peers only (the reverse proxy), never from clients themselves.
        proxy_headers=True,
        forwarded_allow_ips=list(settings.server.forwarded_allow_ips),
    )
    server = DrainingServer(
        config, on_exit_signal=app.state.captioner.start_draining, drain_timeout_s=settings.server.drain_timeout_s
    )
    server.run()
    # The interpreter's last garbage collection walks every object torch and transformers made: seconds of an
    # exit that has nothing left to do. Freezing them skips that walk; the OS reclaims the memory anyway.
    gc.freeze()
    return 1 if failed else 0
