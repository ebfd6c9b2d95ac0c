"""The package's architecture, enforced: imports point one way between subpackages, and no module cycles.

http -> guard -> serving -> model, with tools beside http (offline commands use serving and model, never
the HTTP layer); observability and shared_state are leaves, registry nearly one (config and errors only);
config, errors and client import nothing of ours.
Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import captioner

PACKAGE = Path(captioner.__file__).parent

# What each part may import (besides itself). Top-level entry points (cli, server, __main__) may import anything.
LEAVES = {"config", "errors", "client"}
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "errors": set(),
    "client": set(),
    "observability": {"config", "errors"},
    "shared_state": {"config", "errors", "observability"},
    "model": {"config", "errors", "observability"},
    # The model registry: a folder of versions and aliases; the server and the CLI both use it.
    "registry": {"config", "errors"},
    "serving": {"config", "errors", "observability", "shared_state", "model", "registry"},
    "guard": {"config", "errors", "observability", "shared_state", "serving", "model", "registry"},
    "http": {"config", "errors", "observability", "shared_state", "serving", "model", "guard", "registry"},
    "tools": {"config", "errors", "observability", "shared_state", "serving", "model", "client", "registry"},
}
ENTRY_POINTS = {"cli", "server", "__main__", "__init__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ``captioner.*`` module that ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "captioner":
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)  # `from captioner.x import module`
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: use absolute imports (from captioner.... import ...)")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "captioner")
    return found


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_imports_point_one_way() -> None:
    modules = all_modules()
    wrong = []
    for name, path in modules.items():
        part = part_of(name)
        if part in ENTRY_POINTS:
            continue
        for target in imports_of(path):
            if target not in modules or target == "captioner":
                continue
            other = part_of(target)
            if other != part and other not in ALLOWED[part]:
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports that point the wrong way:\n" + "\n".join(sorted(wrong))


def test_every_subpackage_has_rules() -> None:
    parts = {part_of(m) for m in all_modules()} - ENTRY_POINTS
    assert parts <= set(ALLOWED), f"no layering rule for {parts - set(ALLOWED)}"


def test_no_import_cycles() -> None:
    modules = all_modules()
    graph = {name: {t for t in imports_of(path) if t in modules and t != name} for name, path in modules.items()}
    # A package's __init__ is imported with its modules; cycles through one would be real too.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_wrong_way_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from captioner.http.app import create_app\n")
    assert "captioner.http.app" in imports_of(module)
