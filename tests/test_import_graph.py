"""The package's modules import one another without a circle, function-local imports included (a circle hidden in
a function still means neither module can be read, changed or tested without the other).

One circle is known and pinned, the scan readers' (imaging, medical, dicom, dicom_checks, nifti: two "which reader"
dispatchers calling each other); issue 26's package by concern removes it, and this test then asserts none."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "src" / "braintumor"
KNOWN = [
    {"braintumor.dicom", "braintumor.dicom_checks", "braintumor.imaging", "braintumor.medical", "braintumor.nifti"}
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(tree: ast.AST, modules: set[str]) -> set[str]:
    """The package's modules this module imports anywhere (top level or in a function), not those imported only
    for type checking (`if TYPE_CHECKING:`)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(
                name for name in [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if name in modules
            )
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {
        name: imports_of(ast.parse(path.read_text()), modules) - {name, "braintumor"} for name, path in files.items()
    }


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
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
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_graph_sees_function_local_imports():
    graph = import_graph()
    assert "braintumor.tracking" in graph["braintumor.predict"]  # imported inside resolve_model
    assert len(graph) > 30


def test_circles_are_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_but_the_known_one():
    assert sorted(map(sorted, circles(import_graph()))) == sorted(map(sorted, KNOWN))
