"""Limits on a request's head (request line + headers) for both of uvicorn's HTTP parsers: size and time.

Size: h11 has a cap (``h11_max_incomplete_event_size``). httptools, which uvicorn picks when the ``[fast]`` extra
is installed, has none: a client could send megabytes of headers and the parser would keep every byte. So with
httptools we count the head's bytes as they arrive and answer 431 once they pass ``MAX_HEAD_BYTES``, before the
app ever sees the request.

Time: uvicorn closes idle keep-alive connections, but a connection that sends nothing, or trickles its head a
byte at a time, is never timed out (slowloris). Each head must now be complete within ``head_timeout_s``
(``limits.header_timeout_s``) of the connection opening or of the previous response; past it the connection
gets a 408 and is closed. With the connection limit (``server.limit_concurrency``), idle sockets therefore
cannot hold the process's connection slots for longer than that. When the limit is reached, uvicorn answers
requests with a plain-text 503; with httptools it is the API's JSON 503 ``overloaded`` with a Retry-After.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import Receive, Scope, Send

from captioner.errors import Overloaded, error_response

# nginx allows 4 x 8 KiB of large headers, Node 16 KiB; 64 KiB leaves room for big cookies and tokens.
MAX_HEAD_BYTES = 64 * 1024

_BODY = json.dumps(
    {
        "status": "error",
        "error": {
            "code": "headers_too_large",
            "message": f"the request line and headers are over {MAX_HEAD_BYTES} bytes",
        },
    }
).encode()
_RESPONSE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _BODY
)


_TIMEOUT_BODY = json.dumps(
    {"status": "error", "error": {"code": "timeout", "message": "the request line and headers did not arrive in time"}}
).encode()
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _TIMEOUT_BODY
)


def http_protocol(head_timeout_s: float = 10.0) -> type[asyncio.Protocol]:
    """What to pass as uvicorn's ``http``: httptools (when installed) or h11, with both head limits."""
    base = _capped_httptools() or _h11()

    class Protocol(_HeadDeadline, base):  # type: ignore[misc, valid-type]
        pass

    Protocol.head_timeout_s = head_timeout_s
    Protocol.__name__ = Protocol.__qualname__ = f"Limited{base.__name__}"
    return Protocol


async def _json_service_unavailable(scope: Scope, receive: Receive, send: Send) -> None:
    """uvicorn's answer past ``limit_concurrency``, in the API's error shape."""
    response = error_response(Overloaded("the server has too many open connections, retry later", retry_after_s=1))
    response.headers["connection"] = "close"
    await response(scope, receive, send)


class _HeadDeadline:
    """Mixin for uvicorn's protocols: each request head must arrive within ``head_timeout_s``."""

    head_timeout_s = 10.0
    _head_timer: asyncio.TimerHandle | None = None
    # uvicorn's protocol attributes, for the type checker.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head starts now (uvicorn's keep-alive timer runs too)

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request's head arrived and it is being served: the body has its own deadline
        self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def _h11() -> Any:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return H11Protocol


def _capped_httptools() -> Any:
    try:
        from uvicorn.protocols.http.flow_control import service_unavailable
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn's h11 protocol, with its own cap, is used instead
        return None

    class CappedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True  # reading a request line and headers (also between keep-alive requests)
            self._head_bytes = 0
            self._tail = b""  # the last bytes seen, for a blank line split across two reads

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                # Measured before the parser sees the bytes: the head's size up to its blank line, if it is in
                # this read, else all of the read.
                seen = self._tail + data
                end = seen.find(b"\r\n\r\n")
                self._head_bytes += len(data) if end < 0 else end + 4 - len(self._tail)
                self._tail = seen[-3:]
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._refuse()
                    return
            super().data_received(data)

        def _refuse(self) -> None:
            busy = self.cycle is not None and not self.cycle.response_complete
            if not busy:  # a pipelined request behind an unfinished response: just close
                self.transport.write(_RESPONSE)
            self.transport.close()

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True
            self._head_bytes = 0
            self._tail = b""

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            if app is service_unavailable:  # past limit_concurrency
                app = _json_service_unavailable
            super()._start_asgi_task(cycle, app)

    return CappedHttpToolsProtocol
