"""No import circles: the module-level imports of the project's modules, and of its packages, form DAGs.

A circle works only while someone remembers to keep one side of it inside a function; this test reads
every module with `ast` (nothing is imported) and fails with the circle spelled out. Imports inside
functions and classes are deliberately lazy and do not count; module-level `if`/`try` blocks do.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("serving", "models", "exporters", "embedding_cache", "loadtests", "protos", "stack")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _module_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements outside any function or class body."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, ()):
                    yield from _module_level(child.body if isinstance(child, ast.ExceptHandler) else [child])


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports at module level. `from pkg import sub` points at
    `pkg.sub` when that is a module, else at `pkg` (a name its __init__ defines)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in _module_level(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(name, node, path.name == "__init__.py")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, …, a], or None. Iterative depth-first search (white / grey / black)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                path = [n for n, _ in stack]
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_project_modules_import_no_circle() -> None:
    modules = project_modules()
    assert {"serving.server", "models.features", "embedding_cache.redis_keys", "protos.adrank.v1.ranking_pb2"} <= set(
        modules)
    cycle = find_cycle(import_graph(modules))
    assert cycle is None, "import circle: " + " -> ".join(cycle or ())


def test_packages_import_no_circle() -> None:
    """Coarser: serving -> models -> embedding_cache and so on, with no package importing its importers."""
    packages: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for module, targets in import_graph(project_modules()).items():
        packages[module.split(".")[0]].update(t.split(".")[0] for t in targets)
    graph = {p: targets - {p} for p, targets in packages.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "package import circle: " + " -> ".join(cycle or ())


def test_redis_scan_and_backend_meet_only_in_redis_keys() -> None:
    graph = import_graph(project_modules())
    assert "embedding_cache.redis_keys" in graph["embedding_cache.redis_scan"]
    assert "embedding_cache.redis_backend" not in graph["embedding_cache.redis_scan"]


@pytest.mark.parametrize("graph,cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
    ({"a": set(), "b": {"b"}}, ["b", "b"]),
])
def test_find_cycle_reports_the_circle(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def test_lazy_imports_do_not_count_and_relative_ones_resolve() -> None:
    src = ("import os\nfrom . import sibling\nfrom .sub import thing\n"
           "try:\n    import pkg.guarded\nexcept ImportError:\n    pass\n\n"
           "def later():\n    import pkg.lazy\n")
    tree = ast.parse(src)
    nodes = list(_module_level(tree.body))
    assert len(nodes) == 4  # os, sibling, sub, guarded; not lazy
    assert _resolve("pkg.mod", nodes[1], is_package=False) == "pkg"
    assert _resolve("pkg.mod", nodes[2], is_package=False) == "pkg.sub"
    assert _resolve("pkg", nodes[2], is_package=True) == "pkg.sub"
