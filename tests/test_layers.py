"""The import rule of the code layout (README, "Code layout"): a layer imports
only from itself and the layers below it, and no modules import each other in
a cycle. Every import is read, at the top of a module and inside functions."""
import ast
import os
from typing import Dict, List, Set

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first. A module's layer is that of the longest prefix listed here.
LAYERS = [
    ("sact_det.utils",),
    ("sact_det.config",),
    ("sact_det.data",),
    ("sact_det.modeling.sact",),
    ("sact_det.modeling.flops", "sact_det.modeling.maps"),
    ("sact_det.modeling.sparse",),
    ("sact_det.modeling",),
    ("sact_det.evaluation",),
    ("sact_det.engine",),
    ("sact_det.apps",),
    ("sact_det",),  # the package's __init__: the public names
    ("tools",),
]
NO_DETECTRON2 = ("sact_det.modeling.sact",)  # the paper, independent of Detectron2


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, module
    return best


def layer_name(index: int) -> str:
    return "/".join(LAYERS[index])


def python_files(root: str) -> Dict[str, str]:
    """Module name -> path, for sact_det/ and tools/."""
    modules = {}
    for top in ("sact_det", "tools"):
        for folder, _, files in os.walk(os.path.join(root, top)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, root)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: str, known: Set[str]) -> List[tuple]:
    """(imported module, line) for every import in the file that names a module of
    ``known`` or detectron2; ``from package import name`` counts as the
    submodule when ``name`` is one."""
    tree = ast.parse(open(path).read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in known else target, node.lineno))
    return [(name, line) for name, line in found
            if name in known or name.split(".")[0] == "detectron2"]


def import_graph(root: str):
    modules = python_files(root)
    known = set(modules)
    return modules, {m: imports_of(m, p, known) for m, p in modules.items()}


def upward_imports(graph) -> List[str]:
    problems = []
    for module, imports in graph.items():
        for imported, line in imports:
            if imported.split(".")[0] == "detectron2":
                if module.startswith(NO_DETECTRON2):
                    problems.append(f"{module}:{line} imports {imported} (modeling.sact is Detectron2-free)")
                continue
            if layer_of(imported) > layer_of(module):
                problems.append(f"{module}:{line} imports {imported}, a layer above "
                                f"({layer_name(layer_of(module))} < {layer_name(layer_of(imported))})")
    return problems


def cycles(graph) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    edges = {m: sorted({i for i, _ in imports if i in graph and i != m}) for m, imports in graph.items()}
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return result


def test_no_layer_imports_from_a_layer_above():
    _, graph = import_graph(REPO)
    assert upward_imports(graph) == []


def test_no_import_cycle():
    _, graph = import_graph(REPO)
    assert cycles(graph) == []


def test_every_module_has_a_layer():
    modules, _ = import_graph(REPO)
    assert "sact_det.modeling.sact.act" in modules and "tools.train_net" in modules
    for module in modules:
        layer_of(module)  # asserts


def write(root, files: Dict[str, str]):
    for name, text in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def test_the_checks_find_an_upward_import_and_a_cycle(tmp_path):
    """The checks themselves: the cycle this layout removed (the halting block
    importing an error class from the tools' helpers, which load configs, whose
    mode list came from the halting block), inside a function, is found both as
    an upward import and as a cycle."""
    write(tmp_path, {
        "sact_det/__init__.py": "",
        "sact_det/config/__init__.py": "from sact_det.modeling.sact.adaptive_stage import HALTING_TYPES\n",
        "sact_det/modeling/__init__.py": "",
        "sact_det/modeling/sact/__init__.py": "",
        "sact_det/modeling/sact/adaptive_stage.py": "HALTING_TYPES = ()\n"
                                                    "def f():\n    from sact_det.utils.cli import load\n",
        "sact_det/utils/__init__.py": "",
        "sact_det/utils/cli.py": "def load():\n    from sact_det import config\n",
        "tools/x.py": "",
    })
    _, graph = import_graph(str(tmp_path))
    problems = upward_imports(graph)
    assert any(p.startswith("sact_det.config:1 imports sact_det.modeling.sact.adaptive_stage") for p in problems)
    assert any(p.startswith("sact_det.utils.cli:2 imports sact_det.config") for p in problems)
    assert cycles(graph) == [["sact_det.config", "sact_det.modeling.sact.adaptive_stage", "sact_det.utils.cli"]]


@pytest.mark.parametrize("module, imported, upward", [
    ("sact_det.modeling.sparse.rows", "sact_det.modeling.sact.halting", False),
    ("sact_det.modeling.sact.act", "sact_det.modeling.sparse.rows", True),
    ("sact_det.engine.trainer", "sact_det.evaluation.evaluator", False),
    ("sact_det.evaluation.evaluator", "sact_det.engine.trainer", True),
    ("tools.train_net", "sact_det.engine.train_net", False),
])
def test_layer_order(module, imported, upward):
    assert (layer_of(imported) > layer_of(module)) == upward
