"""The containers deploy/ ships, run as local processes: the same command and arguments, the same environment
(the Dockerfile's ENV, then the spec's; ConfigMap and Secret values filled in), the same mounted paths.

No Docker engine or cluster runs here, so each container's file system is laid out in a temporary folder: a
container path P lives at ``<root>/P``, or, for a mounted volume shared by several containers (a
PersistentVolumeClaim, a named Compose volume), in that volume's own folder. Every absolute path of a mount or of
the image (``/app``...) in the command, the environment and the ConfigMap's files is rewritten to where it lives
here. What else differs from a real container is listed in ``Substitutions``: nothing more.

A container whose spec asks for a read-only root file system (``readOnlyRootFilesystem``, Compose's
``read_only``) runs in a private mount namespace (``unshare``) where ``/`` is remounted read-only and only its
writable volumes are bind-mounted writable: a write anywhere else fails with EROFS, as in the cluster.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.net import free_port
from tests.support.paths import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
IMAGE_MODEL_PATH = "/app/weights/blip-image-captioning-base"  # where the image bakes the weights (configmap.yaml)


def dockerfile_env() -> dict[str, str]:
    """The image's ``ENV`` (``KEY=value`` pairs, backslash-continued)."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV\s+(.+)$", joined, re.MULTILINE):
        for pair in shlex.split(line):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def dockerfile_cmd() -> list[str]:
    match = re.search(r"^CMD\s+(\[.+\])$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "the Dockerfile has no CMD in exec form"
    return list(json.loads(match.group(1)))


@dataclass
class Mount:
    path: str  # in the container
    writable: bool
    files: Mapping[str, str] = field(default_factory=dict)  # a ConfigMap's keys
    shared: Path | None = None  # a volume other containers mount too: its folder here


@dataclass
class Container:
    """One container as its spec says: ``argv`` is command + args, ``env`` the spec's own variables."""

    name: str
    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount]
    read_only_root: bool
    workdir: str = "/app"
    ports: dict[str, int] = field(default_factory=dict)  # named container ports (Kubernetes)
    spec: dict[str, Any] = field(default_factory=dict, repr=False)  # the container's own document


@dataclass
class Substitutions:
    """Everything a local run changes, besides paths: each is a service or device this machine doesn't have."""

    hosts: dict[str, str] = field(default_factory=dict)  # "redis.captioner.svc:6379" -> "127.0.0.1:<port>"
    env: dict[str, str] = field(default_factory=dict)  # e.g. the port, model.device: cpu (no GPU here)
    model_dir: Path | None = None  # the weights baked into the image: a tiny model


# --- reading specs -------------------------------------------------------------------------------------------


def k8s_container(
    pod: Mapping[str, Any],
    *,
    configmaps: Mapping[str, Mapping[str, str]],
    secrets: Mapping[str, Mapping[str, str]],
    claims: Mapping[str, Path],
) -> Container:
    """The pod's one container. A required Secret key that ``secrets`` lacks raises KeyError: the pod would not
    start (CreateContainerConfigError)."""
    (container,) = pod["containers"]
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        value = secrets.get(ref["name"], {}).get(ref["key"])
        if value is None:
            if ref.get("optional", False):
                continue
            raise KeyError(f"Secret {ref['name']} has no key {ref['key']}: the pod does not start")
        env[entry["name"]] = value
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for template in pod.get("volumeClaimTemplates", []):
        volumes[template["metadata"]["name"]] = {"persistentVolumeClaim": {"claimName": template["metadata"]["name"]}}
    mounts = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        read_only = bool(mount.get("readOnly", False))
        if "configMap" in volume:
            mounts.append(Mount(mount["mountPath"], False, files=configmaps[volume["configMap"]["name"]]))
        elif "persistentVolumeClaim" in volume:
            claim = claims[volume["persistentVolumeClaim"]["claimName"]]
            mounts.append(Mount(mount["mountPath"], not read_only, shared=claim))
        else:
            assert "emptyDir" in volume, volume
            mounts.append(Mount(mount["mountPath"], not read_only))
    security = container.get("securityContext", {})
    ports = {port["name"]: port["containerPort"] for port in container.get("ports", []) if "name" in port}
    return Container(
        name=container["name"],
        argv=[*container.get("command", []), *container.get("args", [])],
        env=env,
        mounts=mounts,
        read_only_root=bool(security.get("readOnlyRootFilesystem", False)),
        workdir=container.get("workingDir", "/app"),
        ports=ports,
        spec=container,
    )


def compose_container(name: str, service: Mapping[str, Any], environ: Mapping[str, str],
                      volumes: Mapping[str, Path]) -> Container:  # fmt: skip
    """A Compose service: ``environ`` is its environment as Compose resolved it; ``volumes`` the named volumes'
    folders. A service without a command runs the image's CMD (our Dockerfile's, or the Redis image's)."""
    mounts = [Mount(path, True) for path in service.get("tmpfs", [])]
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        if source in volumes:
            mounts.append(Mount(target, True, shared=volumes[source]))
    argv = list(service.get("command") or dockerfile_cmd())
    workdir = "/data" if argv[0] == "redis-server" else "/app"  # the Redis image's WORKDIR, or ours
    return Container(name, argv, dict(environ), mounts, bool(service.get("read_only", False)), workdir)


# --- running -------------------------------------------------------------------------------------------------


class ContainerProcess:
    """``container`` as a local process under ``root``; stopped with SIGTERM (SIGKILL after a timeout)."""

    def __init__(
        self, container: Container, root: Path, subs: Substitutions, *, port_env: str | None = None,
        port: int | None = None,
    ) -> None:  # fmt: skip
        """``port_env``: the variable that sets the server's port (to a free one, or ``port``)."""
        self.container = container
        self.root = root
        self.subs = subs
        self.logs = root.parent / f"{root.name}.log"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._mapping = self._layout()
        env = {**dockerfile_env(), **container.env, **subs.env}
        if port_env is not None:
            env[port_env] = str(self.port)
        self.env = {key: self.rewrite(value) for key, value in env.items()}
        self.env["PATH"] = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        self.env["PYTHONPATH"] = str(REPO_ROOT)  # this checkout's code, as the image's /app/captioner
        self.env["HOME"] = str(self.host_path("/home/captioner"))  # the image user's home: read-only there too
        if any(m.path == "/tmp" and m.writable for m in container.mounts):
            self.env["TMPDIR"] = str(self.host_path("/tmp"))  # where the container's /tmp volume is here
        self.argv = [self.rewrite(arg) for arg in container.argv]

    def _layout(self) -> dict[str, Path]:
        """Makes the container's folders; returns container path -> folder here for every mount and /app."""
        mapping: dict[str, Path] = {}
        for mount in self.container.mounts:
            folder = mount.shared if mount.shared is not None else self.root / mount.path.lstrip("/")
            folder.mkdir(parents=True, exist_ok=True)
            mapping[mount.path] = folder
        (self.root / "home" / "captioner").mkdir(parents=True, exist_ok=True)
        app = self.root / "app"
        app.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / "config.yaml", app / "config.yaml")  # the image's COPY config.yaml ./
        if self.subs.model_dir is not None:
            weights = self.root / IMAGE_MODEL_PATH.lstrip("/")
            weights.parent.mkdir(parents=True, exist_ok=True)
            weights.symlink_to(self.subs.model_dir)
        mapping.setdefault("/app", app)
        mapping.setdefault("/data", self.root / "data")
        (self.root / "data").mkdir(exist_ok=True)
        for mount in self.container.mounts:  # after the mapping is complete: files may name other mounts
            for key, text in mount.files.items():
                (mapping[mount.path] / key).write_text(self._rewrite_with(text, mapping))
        return mapping

    def host_path(self, path: str) -> Path:
        for prefix in sorted(self._mapping, key=len, reverse=True):
            if path == prefix or path.startswith(prefix + "/"):
                return self._mapping[prefix] / path[len(prefix) :].lstrip("/")
        return self.root / path.lstrip("/")

    def rewrite(self, text: str) -> str:
        return self._rewrite_with(text, self._mapping)

    def _rewrite_with(self, text: str, mapping: Mapping[str, Path]) -> str:
        for before, after in self.subs.hosts.items():
            text = text.replace(before, after)
        prefixes = sorted({*mapping, "/tmp", "/home/captioner"}, key=len, reverse=True)
        pattern = r"(?<![\w./-])(" + "|".join(re.escape(p) for p in prefixes) + r")(?=[/\s\"':;,)]|$)"

        def to_host(match: re.Match[str]) -> str:
            prefix = match.group(1)
            return str(mapping[prefix]) if prefix in mapping else str(self.root / prefix.lstrip("/"))

        return re.sub(pattern, to_host, text)

    def command(self) -> list[str]:
        if not self.container.read_only_root:
            return self.argv
        writable = [str(self.host_path(m.path)) for m in self.container.mounts if m.writable]
        binds = "".join(f"mount --bind {shlex.quote(d)} {shlex.quote(d)} && " for d in writable)
        # cd again: the working directory may be one of the writable folders, now covered by its bind mount.
        script = binds + 'mount -o remount,bind,ro / && cd "$PWD" && exec "$@"'
        namespace = ["unshare", "--mount", "--propagation", "private"]
        if os.geteuid() != 0:
            namespace.insert(1, "--map-root-user")
        return [*namespace, "sh", "-c", script, "sh", *self.argv]

    def start(self) -> ContainerProcess:
        with self.logs.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=self.host_path(self.container.workdir), env=self.env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    def wait_until(self, ready: Callable[[], bool], what: str, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.container.name} exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.container.name}: timed out waiting for {what}:\n{self.log()}")
            time.sleep(0.1)

    def wait_http(self, path: str, timeout_s: float = 240) -> None:
        def answers() -> bool:
            try:
                return httpx.get(self.url + path, timeout=3).status_code == 200
            except httpx.TransportError:
                return False

        self.wait_until(answers, f"GET {path} 200", timeout_s)

    def wait_exit(self, timeout_s: float = 900) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.container.name} still running:\n{self.log()}") from None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self, tail: int = 6000) -> str:
        return self.logs.read_text(errors="replace")[-tail:] if self.logs.exists() else ""


def redis_command(process: ContainerProcess, *args: str) -> str:
    """One command to a local redis-server, as redis-cli would send it; the reply's text."""
    done = subprocess.run(["redis-cli", "-p", str(process.port), "--raw", *args], capture_output=True, text=True,
                          timeout=10, check=False)  # fmt: skip
    return done.stdout.strip()


def local_redis(container: Container, root: Path, *, port: int | None = None) -> ContainerProcess:
    """A Redis container's command, on a free loopback port, or ``port`` (its only substitutions: the port and
    the bind address)."""
    process = ContainerProcess(container, root, Substitutions(), port=port)
    argv = process.argv
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(process.port)
    else:
        argv += ["--port", str(process.port)]
    argv += ["--bind", "127.0.0.1"]
    process.start()

    def pong() -> bool:
        return redis_command(process, "PING") == "PONG"

    process.wait_until(pong, "PONG", timeout_s=30)
    return process
