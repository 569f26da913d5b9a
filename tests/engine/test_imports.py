"""zobench.engine has no import cycle: statically (every import statement, function-level ones
included, since a cycle closed inside a function is one refactor away from an ImportError; only
``if TYPE_CHECKING:`` blocks, which never run, are left out) and by importing each module first in
a fresh interpreter (the order that trips a cycle at runtime)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import zobench.engine

ROOT = Path(zobench.engine.__file__).parent  # src/zobench/engine
PACKAGE = "zobench.engine"


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of zobench.engine (packages by their __init__)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((PACKAGE, *parts))] = path
    return modules


def _imported(node: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that one import statement of module ``name`` imports."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        anchor = name.split(".") if is_package else name.split(".")[:-1]
        anchor = anchor[: len(anchor) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    found = set()
    for alias in node.names:
        child = f"{base}.{alias.name}"  # `from . import trace` imports the module trace
        found.add(child if child in known else base)
    return found & known


def _statements(tree: ast.AST):
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for orelse in node.orelse for n in _statements_of(orelse))
            continue
        yield node
        yield from _statements(node)


def _statements_of(node: ast.AST):
    yield node
    yield from _statements(node)


def import_graph() -> dict[str, set[str]]:
    """Module -> the zobench.engine modules it imports (itself excluded)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        edges: set[str] = set()
        for node in _statements(tree):
            edges |= _imported(node, name, path.name == "__init__.py", set(modules))
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "zobench.engine.triton.kernels" in graph["zobench.engine.triton.engines"]  # from .kernels import
    assert "zobench.engine.virtual" in graph["zobench.engine.triton.engines"]  # from ..virtual import
    assert "zobench.engine.trace" in graph["zobench.engine.base"]  # from . import trace
    assert "zobench.engine.triton" in graph["zobench.engine"]  # inside _build_triton
    assert "zobench.engine.virtual" not in graph["zobench.engine.replicas"]  # under TYPE_CHECKING only


def test_zobench_engine_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


@pytest.mark.slow
def test_every_engine_module_imports_first_in_a_fresh_interpreter():
    """Each module imported first, with no zobench module loaded: one interpreter (torch and
    triton stay loaded, which no cycle of zobench's can involve) that forgets zobench.* between
    imports, in place of one interpreter per module (5 s each)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    names = sorted(_modules(), reverse=True)  # leaves first: the order a cycle trips on
    script = (
        "import importlib, sys, traceback\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'zobench' or m.startswith('zobench.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        print(f'import {name}:', traceback.format_exc()[-2000:])\n"
        "        sys.exit(1)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
