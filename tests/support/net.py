"""Ports for servers that tests start, with no two tests (or xdist workers) ever handed the same one."""

from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path

_FIRST = 10_000  # below every registered port a test box is likely to run (and above the well-known ones)
_lock = threading.Lock()
_given: set[int] = set()
_next: int | None = None


def _ephemeral_start() -> int:
    """Where the kernel's ephemeral range begins: outgoing connections take their local ports from there on."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _worker_block() -> range:
    """This process's own block of ports: all of [10000, ephemeral start) alone, or a slice of it per xdist worker."""
    end = _ephemeral_start()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw3" under xdist
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = (end - _FIRST) // max(count, 1)
    return range(_FIRST + index * size, _FIRST + (index + 1) * size)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback TCP port nobody listens on, for a server a test starts in another process (Redis, nginx, a
    ``captioner serve``), which binds it a moment later.

    Not from the kernel's ephemeral range, where an outgoing connection could take the port before the server
    binds it; from a block of its own per xdist worker, so workers never hand out the same port; each port once
    per run, starting from a random place in the block (another run of the suite on the same machine is elsewhere).
    A server in this process binds port 0 itself instead (``listening_socket``): no window at all.
    """
    global _next
    block = _worker_block()
    with _lock:
        if _next is None:
            _next = random.randrange(block.start, block.stop)
        for _ in range(len(block)):
            port = _next
            _next = block.start + (_next + 1 - block.start) % len(block)
            if port not in _given and _bindable(port):
                _given.add(port)
                return port
    raise RuntimeError(f"no free port left in {block}")


def listening_socket() -> socket.socket:
    """A socket bound to a port of the kernel's choosing on 127.0.0.1, for a server of this process to serve on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock
