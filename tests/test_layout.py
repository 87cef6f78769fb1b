"""The file tree shows the design: the import graph of optkit's modules has no cycle, and each layer
imports only from the layers below it (README, "Layout").

Every import counts, those inside functions and under `TYPE_CHECKING` too: a deferred import that
dodges a cycle at run time is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Layers, lowest first; a module may import from its own layer and the layers this table names.
# `features` are optkit's top-level modules (fusion, swap, preprocessing, ...): they return data;
# `cli` renders it. `optkit.preprocessing` is the preprocessing spec (numpy reference and metadata),
# which verification applies to models that embed their preprocessing: the one feature below `check`.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "core": {"errors"},
    "io": {"errors", "core"},
    "passes": {"errors", "core"},
    "check": {"errors", "core", "io", "optkit.preprocessing"},
    "features": {"errors", "core", "io", "passes", "check"},
    "models": set(),
    "torch": {"errors", "core", "io", "check", "features", "models", "root"},
    "cli": {"errors", "core", "io", "passes", "check", "features", "torch", "models", "root"},
    "root": {"errors", "core", "io", "check", "features"},
}


def _modules() -> dict[str, Path]:
    """Module name -> file, for optkit/ and models/ (installed as optkit.models)."""
    found = {}
    for base, prefix in ((ROOT / "optkit", ("optkit",)), (ROOT / "models", ("optkit", "models"))):
        for path in base.rglob("*.py"):
            parts = [*prefix, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The optkit module `name` is, or is inside (a name imported from a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in MODULES else base)
    resolved = {_resolve(t) for t in targets if t.split(".")[0] == "optkit"}
    return {r for r in resolved if r is not None and r != module}


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] in ALLOWED:
        return parts[1]
    return "cli" if parts[1] == "__main__" else "features"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
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
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_is_read():
    assert "optkit.core.graph" in GRAPH["optkit.passes.identity"]
    assert "optkit.io.validation" in GRAPH["optkit.fusion"]
    assert len(MODULES) > 60


def test_no_import_cycle_in_optkit():
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_layer_imports_only_from_the_layers_below(module):
    layer = _layer(module)
    wrong = [
        target
        for target in sorted(GRAPH[module])
        if _layer(target) != layer
        and _layer(target) not in ALLOWED[layer]
        and target not in ALLOWED[layer]
    ]
    assert not wrong, f"{module} ({layer}) imports {wrong}"


# --- the command line renders; the library computes ------------------------------------------------

CLI = ROOT / "optkit" / "cli"
# Libraries that compute: a command module that calls them directly is doing the library's work.
COMPUTING = {"torch", "numpy", "onnxruntime"}
COMPUTING_NAMES = {"torch", "nn", "np", "F", "ort"}  # the names they are imported as


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imported_roots(tree: ast.AST) -> set[str]:
    """The top-level packages a module imports, anywhere in it (functions, TYPE_CHECKING too)."""
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def _computing_calls(tree: ast.AST) -> list[str]:
    """Attribute accesses rooted at a computing library's usual name (`torch.x`, `np.mean`, ...)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            root: ast.expr = node
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in COMPUTING_NAMES:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scans_see_what_they_look_for():
    tree = ast.parse("import click\ndef f():\n    import torch\n    return torch.zeros(1), np.x.y")
    assert _imported_roots(tree) == {"click", "torch"}
    calls = sorted(_computing_calls(tree))
    assert calls == ["line 4: np.x", "line 4: np.x.y", "line 4: torch.zeros"]


@pytest.mark.parametrize(
    "path", sorted(p for p in (ROOT / "optkit").rglob("*.py") if CLI not in p.parents),
    ids=lambda p: str(p.relative_to(ROOT)),
)  # fmt: skip
def test_only_the_command_line_imports_click(path):
    """Library modules return data and raise optkit's errors; options, echo and exit codes are the
    command line's (optkit/cli)."""
    assert "click" not in _imported_roots(_tree(path))


@pytest.mark.parametrize("path", sorted(CLI.glob("*.py")), ids=lambda p: p.name)
def test_command_modules_leave_computing_to_the_library(path):
    """A command module parses options, calls the library and renders what it returns: it neither
    imports torch, numpy or onnxruntime (not even inside a function) nor calls them, so training,
    data preparation, export and measuring live in library modules (optkit.torch.runs,
    optkit.torch.exporting, ...)."""
    tree = _tree(path)
    assert not _imported_roots(tree) & COMPUTING, path.name
    assert _computing_calls(tree) == [], path.name
