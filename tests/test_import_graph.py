"""The import graph of packager/ and serving/: no cycles, and the dependency rules DESIGN.md draws.

Every import counts, including the ones inside functions (tfpack imports TensorFlow lazily, and a
lazy import is still a dependency). The graph is read from the source with ``ast``, so nothing is
imported to draw it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("packager", "serving")
# The one leaf serving/ may reach packager/ through, and the exit-code error types it raises.
SHARED_LEAF = "packager.layout"
ERRORS = "packager.errors"


def _module_files() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PROJECT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imported_names(module: str, path: Path) -> Iterator[str]:
    """Every dotted name ``module`` imports, at any depth of its code, relative imports resolved."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            # `from packager import smoke` imports the module packager.smoke, not a name in packager.
            yield from (f"{base}.{alias.name}" for alias in node.names)
            yield base


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Module -> the project modules it imports (the nearest enclosing module of each name)."""
    modules = _module_files()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, frozenset[str]] = {}
    for module, path in modules.items():
        targets = {resolve(name) for name in _imported_names(module, path)}
        # Importing a.b.c runs a/__init__ and a/b/__init__ first: from outside a package, those
        # are dependencies too (inside it, a module is imported while its package initialises).
        parents = {
            parent
            for target in targets
            if target is not None
            for parent in _ancestors(target)
            if parent in modules and not _in(module, parent)
        }
        graph[module] = frozenset(t for t in targets | parents if t is not None and t != module)
    return graph


def _ancestors(module: str) -> Iterator[str]:
    parts = module.split(".")
    yield from (".".join(parts[:depth]) for depth in range(1, len(parts)))


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _collapsed(graph: dict[str, frozenset[str]], units: list[str]) -> dict[str, frozenset[str]]:
    """The graph with every module inside one of ``units`` merged into that unit."""

    def unit_of(module: str) -> str:
        return next((u for u in units if _in(module, u)), module)

    merged: dict[str, set[str]] = {}
    for module, targets in graph.items():
        merged.setdefault(unit_of(module), set()).update(unit_of(t) for t in targets)
    return {unit: frozenset(t for t in targets if t != unit) for unit, targets in merged.items()}


def test_the_graph_is_read_from_the_source() -> None:
    graph = import_graph()
    # A reader that found nothing would pass every rule below: make sure it sees known edges.
    assert "packager.layout" in graph["packager.contract"] or any(
        _in(t, "packager.layout") for t in graph["packager.contract"]
    )
    assert any(_in(t, "serving") for t in graph["packager.sample_inputs"])
    assert len(graph) > 50


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset({"a"})}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": frozenset({"b"}), "b": frozenset()}) == []


def test_no_module_imports_itself_back_through_others() -> None:
    assert _cycles(import_graph()) == []


def test_no_cycles_between_packages_and_subpackages() -> None:
    graph = import_graph()
    units = sorted(
        {m for m in graph if m.count(".") == 1 and (ROOT / m.replace(".", "/")).is_dir()}, key=len, reverse=True
    )
    assert _cycles(_collapsed(graph, units)) == []


def _serving_crossings(graph: dict[str, frozenset[str]]) -> list[str]:
    """Edges from serving/ into packager/ other than the shared leaf and the error types."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _in(module, "serving")
        for target in targets
        if _in(target, "packager") and not (_in(target, SHARED_LEAF) or target in (ERRORS, "packager"))
    )


def _leaf_leaks(graph: dict[str, frozenset[str]]) -> list[str]:
    """Edges from the shared leaf (or the error types) to any other project module."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _in(module, SHARED_LEAF) or module == ERRORS
        for target in targets
        if not (_in(target, SHARED_LEAF) or target == ERRORS or target == "packager")
    )


def test_serving_reaches_packager_only_through_the_shared_leaf() -> None:
    assert _serving_crossings(import_graph()) == [], (
        "serving/ may import from packager/ only packager.layout and packager.errors"
    )


def test_the_shared_leaf_imports_nothing_else_from_the_project() -> None:
    graph = import_graph()
    assert _leaf_leaks(graph) == []
    assert graph[ERRORS] <= {"packager"}


def test_the_rules_catch_a_graph_that_breaks_them() -> None:
    graph = dict(import_graph())
    graph["serving.entrypoint"] = graph["serving.entrypoint"] | {"packager.signing"}
    graph["packager.layout.trust"] = graph["packager.layout.trust"] | {"packager.provenance"}
    assert _serving_crossings(graph) == ["serving.entrypoint -> packager.signing"]
    assert _leaf_leaks(graph) == ["packager.layout.trust -> packager.provenance"]


def test_a_lazy_import_counts() -> None:
    # serving.model_server imports the trust check inside a function, so that flags parse fast.
    assert "packager.layout" in import_graph()["serving.model_server"]


def test_packager_init_imports_nothing() -> None:
    # Importing packager.layout runs packager/__init__.py first: it must stay free of imports, or
    # the leaf would drag the rest of packager/ into serving/ after all.
    assert import_graph()["packager"] == frozenset()


@pytest.mark.parametrize(("lower", "upper"), [("packager.graph", "packager.sources")])
def test_one_direction_between_graph_and_sources(lower: str, upper: str) -> None:
    graph = import_graph()
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _in(module, lower)
        for target in targets
        if _in(target, upper)
    )
    assert upward == [], f"{lower} works on the in-memory graph form and must not import {upper}"
