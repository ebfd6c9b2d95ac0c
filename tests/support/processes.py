"""``python -m captioner serve`` in a child process: the real CLI, real signals, and an RSS we can measure.

The in-thread ``LiveServer`` shares the test process, so neither its memory nor its signal handling can be
observed on their own. The system tests that need them use this; it also finds a server's model process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from tests.support.metrics import metric_value
from tests.support.model import MODEL_NAME
from tests.support.net import free_port
from tests.support.paths import REPO_ROOT
from tests.support.waits import PROBE_TIMEOUT_S, wait_for


def rss_bytes(pid: int) -> int:
    """Resident set size of a live process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def model_child_pid(server_pid: int) -> int:
    """The model process: the spawned child (multiprocessing's resource tracker is a child too, but not it)."""
    found = []
    for child in children(server_pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # gone meanwhile
            continue
        if b"spawn_main" in cmdline:
            found.append(child)
    if len(found) != 1:
        raise AssertionError(f"expected one model process under {server_pid}, found {found}")
    return found[0]


def with_repo_on_path(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this checkout first on PYTHONPATH: a child runs this copy's ``captioner`` and ``tests``."""
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))}


class ServerProcess:
    """A captioner server in a subprocess, configured only through ``CAPTIONER_*`` environment overrides."""

    def __init__(
        self,
        model_dir: Path,
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        ready_timeout_s: float = 300,  # only against a hang: two or three servers start at once on 2 busy cores
        module: str = "captioner",
    ) -> None:
        """``module`` is what ``python -m`` runs: the real CLI, or a test wrapper around it."""
        self.args = args or []
        self.module = module
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout_s = ready_timeout_s
        self.env = with_repo_on_path({
            **os.environ,
            "CAPTIONER_MODEL__PATH": str(model_dir),
            "CAPTIONER_MODEL__NAME": MODEL_NAME,
            "CAPTIONER_MODEL__DEVICE": "cpu",  # as tiny_settings: the same answers on a machine with a GPU
            "CAPTIONER_LOGGING__FORMAT": "text",
            "CAPTIONER_LOGGING__LEVEL": "warning",
            "CAPTIONER_SERVER__PREPROCESS_WORKERS": "2",
            **(env or {}),
        })  # fmt: skip
        self._workdir = tempfile.TemporaryDirectory(prefix="captioner-serve-")
        self.log_path = Path(self._workdir.name) / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            # cwd is an empty folder, so no config.yaml is picked up: only the defaults and our overrides apply.
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 *self.args],
                cwd=self._workdir.name, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_ready(self) -> ServerProcess:
        assert self.process is not None
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{self.log()}")
            try:
                return httpx.get(self.url + "/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_for(ready, "the server to be ready", self.ready_timeout_s)
        except AssertionError:
            log = self.log()  # before __exit__ removes its folder
            self.__exit__()
            raise RuntimeError(f"server did not become ready:\n{log}") from None
        except BaseException:
            self.__exit__()
            raise
        return self

    def __enter__(self) -> ServerProcess:
        self.start()
        return self.wait_ready()

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

    def probe(self, path: str) -> httpx.Response:
        """GET ``path`` (``/readyz``, ``/healthz``...), with a timeout only against a hang."""
        return httpx.get(self.url + path, timeout=PROBE_TIMEOUT_S)

    def metric(self, name: str, labels: str = "") -> float:
        """The sum of the series called ``name`` whose labels include ``labels`` (0 when absent)."""
        return metric_value(self.probe("/metrics").text, name, labels)
