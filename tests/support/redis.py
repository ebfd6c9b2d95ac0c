"""A real ``redis-server`` (Debian's package) on a free loopback port, for the shared-cache and job tests."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.net import free_port


class RedisServer:
    """Start, kill (SIGKILL, like a crash) and restart on the same port and folder; loopback only. No persistence,
    unless ``appendonly``: then an AOF fsynced at every write (``--appendfsync always``), as the fleet's Redis runs,
    so a write Redis acknowledged survives a SIGKILL."""

    def __init__(self, workdir: Path, *, appendonly: bool = False, extra_args: Sequence[str] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make system-deps` (apt package redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.appendonly = appendonly
        self.extra_args = list(extra_args)  # e.g. ["--replicaof", "127.0.0.1", "6379"]
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
                "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log"), *self.extra_args]  # fmt: skip
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}; see {self.workdir}")
            if self.ping():
                return self
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One command in the inline protocol, for tests that look at what was stored."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall((" ".join(args) + "\r\n").encode())
            return sock.recv(65536)

    def pid(self) -> int:
        assert self._process is not None, "redis-server is not running"
        return self._process.pid

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=10)
        self._process = None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class RedisSentinel:
    """One Redis Sentinel (``redis-server <conf> --sentinel``) watching ``service`` at a master's port, quick to
    declare it down (``down_after_ms``) so that a failover test takes seconds; quorum 1."""

    def __init__(self, workdir: Path, *, service: str, master_port: int, down_after_ms: int = 1000) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make system-deps` (apt package redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\nlogfile {workdir / 'sentinel.log'}\n"
            f"sentinel monitor {service} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} 10000\n"
        )
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisSentinel:
        self._process = subprocess.Popen([self.binary, str(self.config), "--sentinel"], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis sentinel exited with {self._process.returncode}; see {self.workdir}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis sentinel did not start")

    def __exit__(self, *exc: Any) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None


def unreachable_redis_url() -> str:
    """A Redis URL on a loopback port nobody listens on: connections are refused at once."""
    return f"redis://127.0.0.1:{free_port()}/0"
