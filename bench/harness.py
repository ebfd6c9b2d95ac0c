"""Plumbing for bench/run_all: models, config files, server processes on loopback, one measurement each.

Every server runs as its own process group (LitServe forks workers), started with the same config file, and is
stopped with SIGTERM then SIGKILL after a grace period, so a benchmark never leaves a process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.loadgen import BodySource, Connection, LoadResult, run_load

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_model(cache_dir: Path, size: str) -> Path:
    """An untrained BLIP of ``size`` (``captioner init-model``), written once and reused from ``cache_dir``."""
    out = cache_dir / size
    if not (out / "UNTRAINED").is_file():
        print(f"  writing an untrained {size} BLIP to {out}", flush=True)
        subprocess.run(
            [PYTHON, "-m", "captioner", "init-model", "--size", size, "--out", str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return out


def write_config(directory: Path, name: str, model_dir: Path, **sections: dict[str, Any]) -> Path:
    """A config file for one scenario: the model, quiet logs, then whatever ``sections`` change."""
    config: dict[str, dict[str, Any]] = {
        "model": {"path": str(model_dir), "name": f"bench/{model_dir.name}-blip"},
        "logging": {"level": "warning"},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Server:
    kind: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)


_READY_PATHS = {"ours": "/readyz", "ours-variant": "/readyz", "naive": "/healthz", "bare": "/healthz"}


@contextlib.contextmanager
def serve(
    kind: str, config: Path, log_dir: Path, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Iterator[Server]:
    """Start one server (``ours`` is ``captioner serve``), wait until it answers ready, stop it afterwards."""
    port = free_port()
    if kind == "ours":
        command = [PYTHON, "-m", "captioner", "serve", "--config", str(config), "--host", "127.0.0.1"]
        command += ["--port", str(port)]
    else:
        module_kind = "ours" if kind == "ours-variant" else kind
        command = [PYTHON, "-m", "bench.servers", module_kind, "--config", str(config), "--port", str(port), *args]
    log = log_dir / f"{kind}-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(kind, f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_ready(server, _READY_PATHS.get(kind, "/health"), timeout_s=300)
        yield server
    finally:
        _stop(process)


def _wait_ready(server: Server, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{server.kind} exited with {server.process.returncode}:\n{tail}")
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
            if request(server.url, "GET", path)[0] == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{server.kind} was not ready after {timeout_s:.0f} s (log: {server.log})")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
    # LitServe's workers may outlive their parent; the whole group goes.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def request(url: str, method: str, path: str, body: bytes = b"", content_type: str = "") -> tuple[int, bytes]:
    """One request on a fresh connection (set-up calls, not measurements)."""
    host, _, port = url.removeprefix("http://").partition(":")

    async def go() -> tuple[int, bytes]:
        conn = Connection(host, int(port))
        try:
            return await conn.request(method, path, body, content_type)
        finally:
            conn.close()

    return asyncio.run(go())


def measure(url: str, source: BodySource, **kwargs: Any) -> LoadResult:
    """One closed- or open-loop measurement (``bench.loadgen.run_load``), printed as it finishes."""
    try:
        import uvloop

        result = uvloop.run(run_load(url, source, **kwargs))
    except ImportError:
        result = asyncio.run(run_load(url, source, **kwargs))
    print("    " + result.summary(), flush=True)
    return result


def run_json(command: list[str], env: dict[str, str] | None = None, timeout_s: float = 900) -> dict[str, Any]:
    """Run a bench module that prints one JSON line last; its stderr is dropped unless it fails."""
    done = subprocess.run(
        command, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
