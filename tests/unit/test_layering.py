"""The package's architecture, enforced: the imports between subpackages are exactly the edges below, and no
module imports in a cycle.

The tiers (../shared/DESIGN.md): entry points (cli, server) -> http -> runtime -> {guard, serving, jobs,
rollout, feedback, outbound} -> {model, registry} -> {shared_state, observability, config, errors}; tools beside
http (offline commands, never the HTTP layer), client alone. Within the middle tier: jobs run captions through
serving's use case and send callbacks through outbound; rollout watches serving's variants and sends its drift
webhook through outbound.
Imports inside functions and under TYPE_CHECKING count too: a lazy import is still a dependency.

``EDGES`` is exact: a new edge fails ``test_imports_point_one_way``, and an edge listed here that the code no
longer has fails ``test_every_listed_edge_exists`` (a stale allowance would let a regression through).
"""

from __future__ import annotations

import ast
from pathlib import Path

import captioner

PACKAGE = Path(captioner.__file__).parent

BASE = {"config", "errors"}
# What each part imports (besides itself), exactly.
EDGES: dict[str, set[str]] = {
    "config": set(),
    "errors": set(),
    "client": set(),
    "observability": set(),
    "shared_state": set(),
    "registry": {"config", "model"},  # a model folder's format (model/weights.py: the untrained marker)
    "model": BASE,
    "guard": BASE | {"observability", "shared_state"},
    "feedback": BASE | {"observability", "shared_state"},
    "outbound": BASE | {"observability"},
    "jobs": BASE | {"observability", "shared_state", "serving", "outbound"},
    "serving": BASE | {"observability", "shared_state", "model"},
    "rollout": {"config", "observability", "model", "registry", "serving", "outbound"},
    # shared_state: the composition root builds what the replicas share in their Redis (drift episode, canary table).
    "runtime": BASE
    | {"observability", "model", "guard", "serving", "jobs", "rollout", "feedback", "outbound", "shared_state"},
    "http": BASE | {"observability", "model", "guard", "serving", "jobs", "feedback", "outbound", "runtime"},
    # guard, shared_state: `usage export` reads the tenants' usage counters where the servers keep them (Redis).
    "tools": BASE
    | {"observability", "model", "registry", "serving", "rollout", "feedback", "client", "guard", "shared_state"},
    # Entry points.
    "__init__": set(),
    "__main__": {"cli"},
    "cli": {"config", "server", "tools"},
    "server": {"config", "guard", "http", "model", "observability", "runtime"},
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


def part_edges() -> dict[tuple[str, str], list[str]]:
    """Each (part, other part) import edge, with the module imports that make it."""
    modules = all_modules()
    edges: dict[tuple[str, str], list[str]] = {}
    for name, path in modules.items():
        for target in imports_of(path):
            if target not in modules or target == "captioner":
                continue
            if part_of(target) != part_of(name):
                edges.setdefault((part_of(name), part_of(target)), []).append(f"{name} -> {target}")
    return edges


def test_imports_point_one_way() -> None:
    wrong = [imports[0] for (part, other), imports in part_edges().items() if other not in EDGES.get(part, set())]
    assert not wrong, "imports that point the wrong way (or a new edge: add it to EDGES on purpose):\n" + "\n".join(
        sorted(wrong)
    )


def test_every_listed_edge_exists() -> None:
    found = set(part_edges())
    stale = sorted(
        f"{part} -> {other}" for part, others in EDGES.items() for other in others if (part, other) not in found
    )
    assert not stale, "EDGES allows imports the code no longer makes; remove them:\n" + "\n".join(stale)


def test_only_entry_points_import_the_http_layer() -> None:
    users = {part for (part, other) in part_edges() if other == "http"} - {"http"}
    assert users <= {"server", "cli"}, f"captioner.http imported by {sorted(users)}"


def test_every_subpackage_has_rules() -> None:
    parts = {part_of(m) for m in all_modules()}
    assert parts <= set(EDGES), f"no layering rule for {parts - set(EDGES)}"


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
