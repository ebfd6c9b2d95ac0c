"""``python -m captioner serve`` in a child process: the real CLI, real signals, and an RSS we can measure.

The in-thread ``LiveServer`` of conftest.py shares the test process, so neither its memory nor its signal
handling can be observed on their own. These tests need both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port, metric_value


def rss_bytes(pid: int) -> int:
    """Resident set size of a live process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class ServerProcess:
    """A captioner server in a subprocess, configured only through ``CAPTIONER_*`` environment overrides."""

    def __init__(
        self,
        model_dir: Path,
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        ready_timeout_s: float = 120,
        module: str = "captioner",
    ) -> None:
        """``module`` is what ``python -m`` runs: the real CLI, or a test wrapper around it."""
        self.args = args or []
        self.module = module
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout_s = ready_timeout_s
        self.env = {
            **os.environ,
            "CAPTIONER_MODEL__PATH": str(model_dir),
            "CAPTIONER_MODEL__NAME": "test/tiny-blip",
            "CAPTIONER_MODEL__DEVICE": "cpu",  # as tiny_settings: the same answers on a machine with a GPU
            "CAPTIONER_LOGGING__FORMAT": "text",
            "CAPTIONER_LOGGING__LEVEL": "warning",
            "CAPTIONER_SERVER__PREPROCESS_WORKERS": "2",
            **(env or {}),
        }
        self._workdir = tempfile.TemporaryDirectory(prefix="captioner-serve-")
        self.log_path = Path(self._workdir.name) / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> ServerProcess:
        with self.log_path.open("wb") as log:
            # cwd is an empty folder, so no config.yaml is picked up: only the defaults and our overrides apply.
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    self.module,
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    *self.args,
                ],
                cwd=self._workdir.name,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"server did not become ready:\n{self.log()}")

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._workdir.cleanup()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def log(self, tail: int = 5000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def metric(self, name: str, labels: str = "") -> float:
        """The sum of the series called ``name`` whose labels include ``labels`` (0 when absent)."""
        return metric_value(httpx.get(self.url + "/metrics", timeout=60).text, name, labels)
