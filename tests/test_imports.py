"""The package's import graph: no cycles, and no import up the layers (DEVELOPERS guide).

entry (abslab.report) -> tasks -> callbacks -> attacks, results -> models -> data; utils is
imported by any and imports no other room; results never runs a model. Every import statement
counts, those under `if TYPE_CHECKING:` and inside functions included: read from the source
with ast, without importing anything.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import abslab

PACKAGE = "abslab"
# room -> the rooms its modules may import (their own included). Modules directly under the
# package (abslab.report, abslab/__init__) are entry points: they may import any room.
ALLOWED = {
    "utils": {"utils"},
    "data": {"data", "utils"},
    "models": {"models", "data", "utils"},
    "attacks": {"attacks", "models", "data", "utils"},
    "results": {"results", "data", "utils"},  # results never runs a model
    "callbacks": {"callbacks", "attacks", "results", "models", "data", "utils"},
    "tasks": {"tasks", "callbacks", "attacks", "results", "models", "data", "utils"},
}
# (module, room it imports against the layers): reported to the lead, to be moved, not copied.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def package_modules() -> dict[str, Path]:
    """Every module of abslab (packages as their __init__.py): name -> source file."""
    root = Path(abslab.__file__).parent
    modules = {PACKAGE: root / "__init__.py"}
    for info in pkgutil.walk_packages([str(root)], prefix=f"{PACKAGE}."):
        relative = Path(*info.name.split(".")[1:])
        path = root / relative / "__init__.py" if info.ispkg else root / f"{relative}.py"
        modules[info.name] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The abslab modules `name` (source `path`) imports, every statement of the file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package the module is in
                parts = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join([*parts, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # submodules
    return {module for module in found if module in known}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def room(module: str) -> str | None:
    """abslab.models.cnn -> models; modules directly under the package -> None (entry)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in ALLOWED:
        return None
    return parts[1]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a chain [a, b, ..., a], or None: depth-first search."""
    state: dict[str, str] = {}  # "open" while on the stack, "done" after
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import up the layers, as "importer -> imported (why)"."""
    found = []
    for importer, targets in sorted(graph.items()):
        source = room(importer)
        if source is None:
            continue
        for target in sorted(targets):
            target_room = room(target) or "entry"
            if target_room in ALLOWED[source] or (importer, target_room) in KNOWN_EXCEPTIONS:
                continue
            allowed = ", ".join(sorted(ALLOWED[source]))
            found.append(f"{importer} -> {target} ({source} may import only {allowed})")
    return found


def test_the_checker_finds_a_planted_cycle_and_an_upward_import():
    graph = {
        "abslab.models.a": {"abslab.attacks.b"},
        "abslab.attacks.b": {"abslab.attacks.c"},
        "abslab.attacks.c": {"abslab.models.a"},
    }
    assert find_cycle(graph) == [
        "abslab.attacks.b",
        "abslab.attacks.c",
        "abslab.models.a",
        "abslab.attacks.b",
    ]
    assert layer_violations(graph) == [
        "abslab.models.a -> abslab.attacks.b (models may import only data, models, utils)"
    ]
    assert find_cycle({"abslab.models.a": {"abslab.data.b"}, "abslab.data.b": set()}) is None


def test_every_import_statement_counts(tmp_path):
    source = tmp_path / "queries.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import distances\n"
        "if TYPE_CHECKING:\n"
        "    from abslab.attacks.estimators import GradientEstimator\n"
        "def f():\n"
        "    import abslab.models.base\n"
    )
    known = {"abslab.attacks.distances", "abslab.attacks.estimators", "abslab.models.base"}
    assert imported_modules("abslab.attacks.queries", source, known) == known
    graph = import_graph()
    assert {"abslab.models.base", "abslab.attacks.queries", "abslab.tasks.evaluate"} <= set(graph)


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_imports_up_the_layers():
    violations = layer_violations(import_graph())
    assert not violations, "imports up the layers:\n  " + "\n  ".join(violations)


def test_known_exceptions_still_exist():
    """An exception that was fixed must leave the list, so it cannot hide a new violation."""
    graph = import_graph()
    for importer, target_room in KNOWN_EXCEPTIONS:
        assert any(room(t) == target_room for t in graph.get(importer, ())), (
            f"{importer} no longer imports {target_room}: remove it from KNOWN_EXCEPTIONS"
        )
