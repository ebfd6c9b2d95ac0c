"""A cap on the bytes of a request's head (request line + headers), for both of uvicorn's HTTP parsers.

h11 has one (``h11_max_incomplete_event_size``). httptools, which uvicorn picks when the ``[fast]`` extra is
installed, has none: a client could send megabytes of headers and the parser would keep every byte. So with
httptools we count the head's bytes as they arrive and answer 431 once they pass ``MAX_HEAD_BYTES``, before the
app ever sees the request.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

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


def http_protocol() -> type[asyncio.Protocol] | str:
    """What to pass as uvicorn's ``http``: the capped httptools protocol when httptools is there, else h11."""
    return _CappedHttpToolsProtocol if _CappedHttpToolsProtocol is not None else "h11"


def _capped_httptools() -> Any:
    try:
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

    return CappedHttpToolsProtocol


_CappedHttpToolsProtocol = _capped_httptools()
