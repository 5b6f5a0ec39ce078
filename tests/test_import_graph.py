"""The package's modules import each other without cycles (counting imports inside functions too).

A cycle hidden by a function-level import works until someone moves the import to the top of the file; it
also means the two modules are one unit in disguise. The graph is read from the source with ``ast``, so it
sees every import statement, wherever it sits, without importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "spinenet"


def module_name(path: Path) -> str:
    """``spinenet/a/b.py`` -> ``spinenet.a.b``; a package's ``__init__.py`` is the package itself."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (top level, functions, classes)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def nearest_module(dotted: str) -> str | None:
        """``spinenet.a.b.c`` -> the longest prefix that is one of our modules (``c`` may be a function)."""
        parts = dotted.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in modules:
                return candidate
            parts.pop()
        return None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[: len(package) - (node.level - 1)])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            # `from spinenet.a import b`: the module spinenet.a.b when there is one, else spinenet.a
            targets = [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "spinenet":
                continue
            module = nearest_module(target)
            if module is not None and module != name:
                found.add(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = find_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm; the graph is small, so recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [shortest_cycle(graph, component) for component in components]


def shortest_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest closed path through the component's first module (breadth-first), for the message."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def test_graph_is_read_from_the_source():
    """The parser sees top-level, function-level, relative and `from a import module` imports."""
    graph = import_graph()
    assert "spinenet.cli" in graph and "spinenet.errors" in graph["spinenet.cli"]
    assert "spinenet.roi.phantom" in graph["spinenet.data.datamodule"]
    assert "spinenet.models.registry" in graph["spinenet.models.classification"]


def test_find_cycles_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_relative_and_from_imports_resolve(tmp_path, monkeypatch):
    source = "from . import b\nfrom .b import thing\nfrom spinenet.p import c\nimport spinenet.p.b as alias\n"
    path = tmp_path / "spinenet" / "p" / "a.py"
    modules = {name: path for name in ("spinenet.p", "spinenet.p.a", "spinenet.p.b", "spinenet.p.c")}
    path.parent.mkdir(parents=True)
    path.write_text("def f():\n    " + source.replace("\n", "\n    "))
    assert imported_modules("spinenet.p.a", path, modules) == {"spinenet.p.b", "spinenet.p.c"}


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    if cycles:  # each cycle, then every import among its modules (what to untangle)
        lines = []
        for cycle in cycles:
            members = set(cycle)
            lines.append(" -> ".join(cycle))
            lines += [f"    {a} imports {', '.join(sorted(graph[a] & members))}" for a in sorted(members)]
        pytest.fail("import cycles (imports inside functions count too):\n" + "\n".join(lines))
