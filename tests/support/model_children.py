"""Finding a server's ``model.worker: process`` child in /proc (Linux), to SIGKILL it like a crash would."""

from __future__ import annotations

from pathlib import Path


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
