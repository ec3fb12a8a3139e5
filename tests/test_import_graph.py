"""The package's architecture, checked: its modules import one another without a circle, function-local imports
included (a circle hidden in a function still means neither module can be read, changed or tested without the
other), and no layer imports one above it.

The layers, from the bottom (a module may import from its own layer and those below; imports only for type
checking are not counted):

    errors, config, fileio, runtime, progress, processes    what every concern uses
    scans        a file into pictures (limits, readers, preprocessing)
    data         the dataset: scan, validate, splits, cache, import, sample, external set
    model        the network, presets, inference, novelty, Grad-CAM, and the Predictor (a model file to probabilities)
    evaluation   metrics, report, model card
    training     the loop, checkpoints, weight averaging (no mlflow, no dvc)
    tracking     MLflow and provenance
    serving      the served request, the pyfunc, the prediction log, the drift monitor
    predict, app `braintumor predict` and the page
    pipeline, preview, recipes, cli    the stages and the command
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "src" / "braintumor"
LAYERS = [
    {"errors", "config", "fileio", "runtime", "progress", "processes"},
    {"scans"},
    {"data"},
    {"model"},
    {"evaluation"},
    {"training"},
    {"tracking"},
    {"serving"},
    {"predict", "app"},
    {"pipeline", "preview", "recipes", "cli"},
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
    assert "braintumor.tracking.runs" in graph["braintumor.predict"]  # imported inside resolve_model
    assert len(graph) > 30


def test_circles_are_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    assert circles(import_graph()) == []


def layer_of(module: str) -> int:
    top = module.split(".")[1]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(module)
    )


def test_every_module_has_a_layer():
    for module in import_graph():
        if module != "braintumor":
            layer_of(module)  # StopIteration names a module that LAYERS lacks


def test_an_upward_import_is_found():
    graph = {"braintumor.scans.read": {"braintumor.model.network"}, "braintumor.model.network": {"braintumor.fileio"}}
    assert upward_imports(graph) == ["braintumor.scans.read -> braintumor.model.network"]


def test_no_layer_imports_one_above_it():
    assert upward_imports(import_graph()) == []


@pytest.mark.parametrize("package", ["scans", "model", "training", "evaluation", "data"])
def test_the_core_imports_no_mlflow_or_dvc(package):
    """The training core and what it stands on run on a bare CUDA machine with only torch and torchvision."""
    for path in (PACKAGE / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        imported |= {
            node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
        }
        assert not imported & {"mlflow", "dvc"}, f"{path.relative_to(REPO)} imports {imported & {'mlflow', 'dvc'}}"
