"""The modules of bioprop_cli import each other without cycles, imports inside functions included.

The graph is built from the source: every `import` and `from ... import` anywhere in a module (top
level, inside functions, under `if TYPE_CHECKING`) is an edge to the module it names; `from
package import name` points at `package.name` when that is a module, else at the package.
"""

from __future__ import annotations

import ast
from pathlib import Path
from helpers import REPO_ROOT

PACKAGE = "bioprop_cli"
ROOT = REPO_ROOT / PACKAGE


def module_files() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in known else base)
    return {t for t in targets if t in known and t != module}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    # rules/__init__ imports its rule modules at top level; config imports models/resnet.py inside a function.
    assert "bioprop_cli.rules.library" in graph["bioprop_cli.rules"]
    assert "bioprop_cli.models.resnet" in graph["bioprop_cli.config"]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def external_imports(path: Path) -> set[str]:
    """The top-level names of the packages a module imports (anywhere in it)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_figures_are_drawn_only_in_the_report_package():
    drawing = sorted(name for name, path in module_files().items() if "matplotlib" in external_imports(path))
    assert drawing and all(name.startswith(f"{PACKAGE}.report") for name in drawing), drawing


def test_the_library_never_imports_the_cli():
    """bioprop_cli may import the library bioprop; bioprop never imports bioprop_cli."""
    library = ROOT.parent / "bioprop"
    modules = sorted(library.rglob("*.py"))
    assert modules
    importing = [str(path.relative_to(ROOT.parent)) for path in modules if PACKAGE in external_imports(path)]
    assert importing == [], f"bioprop modules importing {PACKAGE}: {importing}"
