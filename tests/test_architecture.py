"""The shape of the house (docs/architecture.md#floors), checked on the source: the import graph of the
project's packages has no circle, the trainer never imports launch/, library code never imports
scripts/ or bench/, and files and functions stay small.

Every import counts, also those inside functions (a deferred import is still a dependency). A
module's imports are attributed to the package it lives in, so a circle between two packages is a
circle even when no two modules import each other directly.
"""

import ast
import os
from collections import defaultdict

import pytest

from tests.fixtures import REPO

PACKAGES = ("model", "data", "pretrain", "planning", "launch", "scripts", "bench", "evaluation",
            "handoff")
LIBRARY = ("model", "data", "pretrain", "planning", "launch", "evaluation", "handoff")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def _sources():
    for package in PACKAGES:
        root = os.path.join(REPO, package)
        for directory, _, names in os.walk(root):
            for name in sorted(names):
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    yield os.path.relpath(path, REPO), path


def _module_name(relpath: str) -> str:
    parts = relpath[:-3].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: str, module: str):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[:-node.level] if not path.endswith("__init__.py") else (
                    module.split(".")[:len(module.split(".")) - node.level + 1])
                yield ".".join(base + ([node.module] if node.module else []))
            elif node.module:
                yield node.module


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.fixture(scope="module")
def graph():
    edges = defaultdict(set)   # subpackage (e.g. pretrain.checkpoint) -> subpackages it imports
    for relpath, path in _sources():
        module = _module_name(relpath)
        for imported in _imports(path, module):
            if _top(imported) in PACKAGES:
                edges[_unit(module, path)].add(_unit(imported))
    return edges


def _unit(module: str, path: str = "") -> str:
    """The unit of the graph: a package's direct modules are units of their own, a subpackage
    (pretrain.checkpoint, pretrain.engines, data.curation, ...) is one unit."""
    parts = module.split(".")
    if len(parts) >= 3 or (path.endswith("__init__.py") and len(parts) == 2):
        return ".".join(parts[:2])
    return module


def test_the_import_graph_has_no_circle(graph):
    state, stack, circles = {}, [], []

    def visit(unit):
        state[unit] = "open"
        stack.append(unit)
        for target in sorted(graph.get(unit, ())):
            if target == unit:
                continue
            if state.get(target) == "open":
                circles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[unit] = "done"

    for unit in sorted(graph):
        if unit not in state:
            visit(unit)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_trainer_never_imports_launch_and_libraries_never_import_tools(graph):
    wrong = [(unit, target) for unit, targets in graph.items() for target in targets
             if (_top(unit) == "pretrain" and _top(target) == "launch")
             or (_top(unit) in LIBRARY and _top(target) in ("scripts", "bench"))]
    assert not wrong, wrong


def test_files_and_functions_stay_small():
    too_long = []
    for relpath, path in _sources():
        source = open(path).read()
        lines = source.count("\n")
        if lines > MAX_FILE_LINES:
            too_long.append(f"{relpath}: {lines} lines")
        for node in ast.walk(ast.parse(source, path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{relpath}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, too_long
