"""The import graph of tcpscope/ and sim/tcpscope_sim/ has no cycles: every import
counts, at the top of a module or inside a function (a lazy import still couples the two
modules), read from the AST without importing anything."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"tcpscope": ROOT / "tcpscope", "tcpscope_sim": ROOT / "sim" / "tcpscope_sim"}


def modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name (a package by its own name)."""
    out: dict[str, Path] = {}
    for pkg, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = [pkg, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imported_names(module: str, path: Path) -> Iterator[str]:
    """Dotted names an `import` or `from ... import` anywhere in the module may refer to."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)  # `from pkg import module`


def import_graph(mods: Mapping[str, Path]) -> dict[str, set[str]]:
    """module -> the modules of the packages it imports (the longest known prefix of each name)."""
    graph: dict[str, set[str]] = {}
    for m, path in mods.items():
        deps: set[str] = set()
        for name in _imported_names(m, path):
            while name and name not in mods:
                name = name.rpartition(".")[0]
            if name and name != m:
                deps.add(name)
        graph[m] = deps
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (depth-first, iterative)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path = [start]
        todo = [iter(sorted(graph[start]))]
        state[start] = 1
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                todo.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                todo.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_find_cycle_finds_one_and_only_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is no cycle


def test_the_walk_sees_top_level_lazy_and_cross_package_imports() -> None:
    graph = import_graph(modules())
    assert "tcpscope.consume" in graph["tcpscope.tail"]  # from tcpscope import consume
    assert "tcpscope.tail" in graph["tcpscope.kubectl_plugin"]  # inside a function
    assert "tcpscope.consume" in graph["tcpscope_sim.watch"]  # the sim reads through the readers' loop
    assert "tcpscope.v1.events_pb2" in graph["tcpscope.summary"]


def test_the_import_graph_is_acyclic() -> None:
    cycle = find_cycle(import_graph(modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
