"""The package's import graph has no circle.

The graph is read from the source (``ast``), not from a running interpreter, so it sees every
module-level import, including the ones an import order happens to satisfy. An edge ``a -> b``
means that importing ``a`` runs ``b``: ``b`` is imported at module level (class bodies included;
``if TYPE_CHECKING:`` blocks and function bodies excluded), or ``b`` is a package above such an
import (its ``__init__`` runs first), unless ``b`` is a package that holds ``a`` (it is already
being imported when ``a`` runs). The root package ``losskit`` re-exports everything, so it is left
out as a parent.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "losskit"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in (SRC / ROOT).rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = _module_names()


def _top_level_imports(tree: ast.Module):
    """Import statements that run when the module is imported."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.ClassDef, ast.For, ast.While)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                stack.extend(getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The losskit modules an import statement names."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in MODULES}
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    base = node.module or ""
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    found = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES}
    if base in MODULES and len(found) < len(node.names):
        found.add(base)  # names defined in the module or package itself
    return found


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts) + 1)}


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text(), str(path))):
            for target in _targets(module, node):
                edges |= _with_parents(target) | ({target} if target == ROOT else set())
        graph[module] = {e for e in edges if e != module and not module.startswith(e + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle ``[a, b, ..., a]`` of ``graph``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_import_graph_has_no_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_graph_sees_the_imports_that_matter():
    graph = import_graph()
    assert "losskit.compose.composite" in graph["losskit._core.module"]  # LossModule inherits LossAlgebra
    assert "losskit.compose" in graph["losskit._core.module"]  # the package's __init__ runs first
    assert "losskit._core.registry" in graph["losskit.compose.builder"]


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


# The command line and the arena import their optional, heavy dependencies (matplotlib, rich,
# torchmetrics) only when a command runs them, and the Triton kernels (triton) only when a loss's
# backend selects them; everywhere else a losskit import is at the top.
DEFERRED = ("losskit.arena", "losskit.cli", "losskit._kernels")


def test_losskit_imports_are_at_module_level():
    local = []
    for module, path in MODULES.items():
        if module.startswith(DEFERRED):
            continue
        for function in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                             else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                             else ["." * getattr(node, "level", 0)] if isinstance(node, ast.ImportFrom) else [])
                    if any(n == ROOT or n.startswith((ROOT + ".", ".")) for n in names):
                        local.append(f"{module}.{function.name} line {node.lineno}")
    assert not local, "function-local losskit imports: " + ", ".join(local)


def _control_characters_in_docstrings(tree: ast.AST) -> list[int]:
    """Line numbers of docstrings holding a control character: a TeX command such as ``\\frac`` or
    ``\\alpha`` in a docstring without the ``r`` prefix becomes a form feed or a bell."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc and any(ord(c) < 32 and c not in "\n\t" for c in doc):
                lines.append(node.body[0].lineno)
    return lines


def test_no_docstring_holds_a_control_character():
    found = {name: lines for name, path in _module_names().items()
             if (lines := _control_characters_in_docstrings(ast.parse(path.read_text())))}
    assert not found, f"docstrings with control characters (add the r prefix): {found}"


def test_the_docstring_scan_finds_a_form_feed():
    assert _control_characters_in_docstrings(ast.parse('def f():\n    """a \\frac12 b"""\n')) == [2]
