"""The package's imports: every module imports alone, and the import graph has no cycle.

(a) Each module of the ``hashbench`` package (the core in ``hashbench/`` and the bundled
plugins in ``baselines/`` and ``plugins/``, installed as ``hashbench.baselines`` and
``hashbench.plugins``) is imported alone in a fresh interpreter, so a module that works only
when another was imported first fails here.

(b) The static import graph of the package (the core and the bundled plugins), read with ``ast`` from the sources:
module-level AND function-level imports (``if TYPE_CHECKING:`` blocks excepted: they never
run). ``from X import y`` is an edge to ``X.y`` when that is a module, else to ``X``; importing
a submodule is not an edge to its parent package. A cycle fails the test, naming it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> the package name it is installed as (pyproject's package-dir)
SOURCES = {"hashbench": ROOT / "hashbench", "hashbench.baselines": ROOT / "baselines",
           "hashbench.plugins": ROOT / "plugins"}
#: modules that do something when imported (``python -m hashbench`` runs the command)
NOT_IMPORTED_ALONE = {"hashbench.__main__"}


def module_files(sources: dict[str, Path]) -> dict[str, Path]:
    """Module name -> source file, for every .py under each source folder (a package's
    ``__init__.py`` is the package's name)."""
    modules = {}
    for package, folder in sources.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, at any depth, outside ``if TYPE_CHECKING:``."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return found


def _base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name of ``from <base> import ...`` in ``module``."""
    if node.level == 0:
        return node.module or ""
    package = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package's modules it imports (see the module docstring)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in modules)
                continue
            base = _base(node, module, is_package)
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                if target in modules:
                    edges.add(target)
        graph[module] = edges - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


# ----------------------------------------------------------------------------- the checks

def test_the_import_graph_has_no_cycle():
    modules = module_files(SOURCES)
    assert {"hashbench.train", "hashbench.deep", "hashbench.data.images", "hashbench.plugins.wch.model"} <= set(modules)
    graph = import_graph(modules)
    assert "hashbench.trainconfig" in graph["hashbench.deep"] and "hashbench.train" in graph["hashbench.deep"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_each_module_imports_alone_in_a_fresh_interpreter(tmp_path):
    names = sorted(set(module_files(SOURCES)) - NOT_IMPORTED_ALONE)

    def imports(name: str) -> tuple[str, str]:
        out = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=120, check=False)
        return name, out.stderr.strip().splitlines()[-1] if out.returncode else ""

    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = {name: error for name, error in pool.map(imports, names) if error}
    assert not failed, failed


# ----------------------------------------------------------------------------- the checker itself

def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(module_files({"pkg": tmp_path / "pkg"}))


def test_the_checker_sees_function_level_imports_and_names_the_cycle(tmp_path):
    graph = _package(tmp_path, {
        "__init__.py": "",
        "deep.py": "def fit():\n    from .train import fit\n",  # function level, as deep -> train was
        "train.py": "from .deep import TrainConfig\n",
        "other.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import deep\n",
    })
    assert graph["pkg.deep"] == {"pkg.train"} and graph["pkg.train"] == {"pkg.deep"}
    assert graph["pkg.other"] == set()  # TYPE_CHECKING imports never run
    assert find_cycle(graph) == ["pkg.deep", "pkg.train", "pkg.deep"]


def test_a_submodule_import_is_no_edge_to_its_parent_package(tmp_path):
    # as hashbench/__init__.py imports the registry on first use, and the registry imports
    # hashbench.hookspecs: no cycle through the package
    graph = _package(tmp_path, {
        "__init__.py": "def __getattr__(name):\n    from . import registry\n    return registry.create\n",
        "registry.py": "from .hooks import spec\nimport pkg.sub.leaf as leaf\n",
        "hooks.py": "",
        "sub/__init__.py": "",
        "sub/leaf.py": "from .. import hooks\nfrom pkg import create\n",  # `create` is no module: the package
    })
    assert graph["pkg"] == {"pkg.registry"} and graph["pkg.registry"] == {"pkg.hooks", "pkg.sub.leaf"}
    assert graph["pkg.sub.leaf"] == {"pkg.hooks", "pkg"}
    assert find_cycle(graph) == ["pkg", "pkg.registry", "pkg.sub.leaf", "pkg"]
    graph["pkg.sub.leaf"].discard("pkg")
    assert find_cycle(graph) is None
