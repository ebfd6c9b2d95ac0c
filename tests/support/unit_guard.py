"""What keeps tests/unit/ a unit tier: while ``refusing(test)`` is active, a network socket, a process or a model
raises ``UnitTierViolation`` (tests/unit/conftest.py activates it around every phase of every unit test).

The patches are installed once, when tests/unit/conftest.py is imported, and do nothing outside ``refusing``:
the integration and system tiers, in the same process (xdist or not), are not affected.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import multiprocessing.process
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import ModuleType
from typing import Any

WHERE_INSTEAD = (
    "unit tests start no process, open no network socket and load no model (docs/testing.md): "
    "move the test to tests/integration/ (in-process server, tiny model, loopback) or tests/system/ (processes)"
)


class UnitTierViolation(Exception):
    pass


# ``ctypes.util.find_library`` asks ldconfig where a shared library is; importing torch does (cuda.pathfinder looks
# for libdl). A library finding its own files, not a test starting a process.
_LIBRARY_LOOKUP = ["/sbin/ldconfig", "-p"]


_lock = threading.Lock()
_active: str | None = None  # the node id of the unit test (or module) in progress
_violations: list[str] = []


def _refuse(what: str) -> None:
    active = _active
    if active is None:
        return
    message = f"{active} {what}: {WHERE_INSTEAD}"
    with _lock:
        _violations.append(message)
    raise UnitTierViolation(message)


@contextlib.contextmanager
def refusing(node_id: str) -> Iterator[None]:
    """Refuse sockets, processes and models while the block runs; fail at its end if any was attempted, even when
    the code under test caught the exception (a fallback path would otherwise hide it)."""
    global _active
    install()
    previous, _active = _active, node_id
    with _lock:
        already = len(_violations)
    try:
        yield
    finally:
        _active = previous
    with _lock:
        found = _violations[already:]
        del _violations[already:]
    if found:
        raise UnitTierViolation("\n".join(dict.fromkeys(found)))


def refuse_fixtures(node_id: str, requested: Iterable[str], refused: set[str]) -> None:
    """A unit test that asks for a fixture that makes or serves a model (cached per run or per module, so the
    patches alone would catch it only when it happens to be the first to ask) fails at once."""
    asked = sorted(refused.intersection(requested))
    if asked:
        raise UnitTierViolation(f"{node_id} uses the fixture(s) {', '.join(asked)}: {WHERE_INSTEAD}")


# --- the patches ------------------------------------------------------------------------------------------------

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    _patch_sockets()
    _patch_processes()
    for name, patch in _MODEL_PATCHES.items():
        module = sys.modules.get(name)
        if module is not None:
            patch(module)
    sys.meta_path.insert(0, _PatchOnImport())


def _patch_sockets() -> None:
    original = socket.socket.__init__

    def __init__(self: socket.socket, family: int = -1, type: int = -1, proto: int = 0, fileno: Any = None) -> None:
        # With a fileno the socket already exists (socketpair, fromfd, accept); -1 without one means AF_INET.
        if fileno is None and family in (-1, socket.AF_INET, socket.AF_INET6):
            _refuse(f"opened a network socket (family {socket.AddressFamily(family if family != -1 else 2).name})")
        original(self, family, type, proto, fileno)

    socket.socket.__init__ = __init__  # type: ignore[method-assign]


def _patch_processes() -> None:
    execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def _execute_child(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> Any:
        argv = [args] if isinstance(args, str) else [str(a) for a in args]
        if argv[:2] != _LIBRARY_LOOKUP:
            _refuse(f"started a process: {' '.join(argv)}")
        return execute_child(self, args, *rest, **kwargs)

    subprocess.Popen._execute_child = _execute_child  # type: ignore[attr-defined]

    start = multiprocessing.process.BaseProcess.start

    def start_process(self: multiprocessing.process.BaseProcess) -> None:
        _refuse(f"started a multiprocessing process ({self.name})")
        start(self)

    multiprocessing.process.BaseProcess.start = start_process  # type: ignore[method-assign]

    def refusing_os(name: str) -> None:
        original = getattr(os, name, None)
        if original is None:
            return

        def call(*args: Any, **kwargs: Any) -> Any:
            _refuse(f"called os.{name}")
            return original(*args, **kwargs)

        setattr(os, name, call)

    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        refusing_os(name)


def _refuse_model_init(cls: type, what: str) -> None:
    original: Callable[..., None] = cls.__init__  # type: ignore[misc]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        _refuse(f"built or loaded a model ({what} {type(self).__name__})")
        original(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[misc]


def _patch_transformers(module: ModuleType) -> None:
    # Every model, random (init-model) or loaded (from_pretrained), runs PreTrainedModel.__init__.
    _refuse_model_init(module.PreTrainedModel, "transformers")


def _patch_blip(module: ModuleType) -> None:
    _refuse_model_init(module.BlipCaptioner, "captioner's")


def _patch_loader(module: ModuleType) -> None:
    load_captioner = module.load_captioner

    def refused(*args: Any, **kwargs: Any) -> Any:
        _refuse("called load_captioner()")
        return load_captioner(*args, **kwargs)

    module.load_captioner = refused


_MODEL_PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "transformers.modeling_utils": _patch_transformers,
    "captioner.model.blip": _patch_blip,
    "captioner.model.loader": _patch_loader,
}


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches a module of ``_MODEL_PATCHES`` as soon as it has been executed, before anyone imports from it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        patch = _MODEL_PATCHES.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader.exec_module = _then(spec.loader.exec_module, patch)  # type: ignore[method-assign]
            return spec
        return None


Exec = Callable[[ModuleType], None]


def _then(exec_module: Exec, patch: Exec) -> Exec:
    """``exec_module``, then ``patch`` on the module it filled."""

    def patched(module: ModuleType) -> None:
        exec_module(module)
        patch(module)

    return patched
