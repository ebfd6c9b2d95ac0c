"""Debian's real nginx, running deploy/nginx.conf on loopback as the current user.

``loopback_config`` rewrites only what ties the file to its Docker network and image: the upstream
addresses, the listen address and the file paths (pid, logs, temp folders). Every other directive (retries,
timeouts, body limit, health-check parameters, error pages) is the shipped file's own. Each rewrite must match
exactly once, so a change in the file's shape fails here loudly instead of testing something else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.support.net import free_port
from tests.support.paths import REPO_ROOT

DEPLOY_NGINX_CONF = REPO_ROOT / "deploy" / "nginx.conf"
_UPSTREAM_SERVER = re.compile(r"^(\s*)server\s+[\w.-]+:\d+(\s[^;]*)?;\n", re.MULTILINE)


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found is None:
        raise RuntimeError("nginx is not installed: run `make system-deps` (apt package nginx)")
    return found


def _replace_once(text: str, pattern: str, replacement: str) -> str:
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise AssertionError(f"deploy/nginx.conf: expected exactly one match of {pattern!r}, found {count}")
    return new


def loopback_config(source: str, *, upstream_ports: Sequence[int], listen_port: int, workdir: Path) -> str:
    servers = _UPSTREAM_SERVER.findall(source)
    if not servers:
        raise AssertionError("deploy/nginx.conf: no upstream server lines")
    indent, params = servers[0]
    first = _UPSTREAM_SERVER.search(source)
    assert first is not None
    lines = "".join(f"{indent}server 127.0.0.1:{port}{params};\n" for port in upstream_ports)
    text = source[: first.start()] + lines + _UPSTREAM_SERVER.sub("", source[first.start() :])
    text = _replace_once(text, r"^(\s*)listen 8080;", rf"\1listen 127.0.0.1:{listen_port};")
    text = _replace_once(text, r"^pid \S+;", f"pid {workdir}/nginx.pid;")
    text = _replace_once(text, r"^error_log \S+ (\w+);", rf"error_log {workdir}/error.log \1;")
    text = _replace_once(text, r"^(\s*)access_log \S+ captioner;", rf"\1access_log {workdir}/access.log captioner;")
    temp = "".join(
        f"    {kind}_temp_path {workdir}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = _replace_once(text, r"^http \{\n", "http {\n" + temp)
    if os.geteuid() == 0:
        # As root, workers would switch to `nobody`, who can't use a private temp folder: stay the current user.
        text = "user root root;\n" + text
    return text


class Nginx:
    """nginx in the foreground (``daemon off``), stopped with SIGQUIT (graceful) or killed after a timeout."""

    def __init__(self, workdir: Path, *, upstream_ports: Sequence[int], source: Path = DEPLOY_NGINX_CONF) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(
            loopback_config(source.read_text(), upstream_ports=upstream_ports, listen_port=self.port, workdir=workdir)
        )
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        return [nginx_binary(), "-p", str(self.workdir), "-c", str(self.conf), "-e", str(self.workdir / "error.log"),
                *extra]  # fmt: skip

    def check(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)

    def __enter__(self) -> Nginx:
        self.process = subprocess.Popen(
            self.command("-g", "daemon off;"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.error_log()}")
            try:
                httpx.get(self.url + "/metrics", timeout=1)  # answered by nginx itself
                return self
            except httpx.TransportError:
                time.sleep(0.02)
        raise RuntimeError("nginx did not start:\n" + self.error_log())

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def error_log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def access_log(self) -> list[dict[str, Any]]:
        path = self.workdir / "access.log"
        if not path.exists():
            return []
        # nginx writes whole lines; a read may still catch the last one half written, so only complete lines.
        complete = path.read_text().split("\n")[:-1]
        return [json.loads(line) for line in complete if line.strip()]
