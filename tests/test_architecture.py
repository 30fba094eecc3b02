"""The shape of the house (docs/architecture.md#floors), checked on the source: the import graph has
no circle, between modules (also two modules of one package) nor between subpackages nor between
packages; every arrow between packages points down the floors (so pretrain/ never imports
evaluation/ or handoff/, the trainer never imports launch/, library code never imports scripts/ or
bench/); files and functions stay small.

Every import statement of a file counts, wherever it stands: the graph is parsed with `ast` from
the whole tree, so an import deferred into a function (for start-up time or an optional
dependency) is still an arrow. `from a.b import c` is an arrow to the module a.b.c when there is
one, else to a.b. Python's implicit import of a module's parent packages (importing a.b.c runs
a/__init__.py first) is not an arrow: the file did not name them.

One module sits on the top floor although it lives in pretrain/: the entry, pretrain/train.py
(`python -m pretrain.train`), the one place that hands the trainer what pretrain/ may not import
(the code evaluation of evaluation/, the Hugging Face import of handoff/): ENTRY_POINTS.
"""

import ast
import os
from collections import defaultdict

import pytest

from tests.fixtures import REPO

PACKAGES = ("model", "data", "pretrain", "planning", "launch", "scripts", "bench", "evaluation",
            "handoff")
LIBRARY = ("model", "data", "pretrain", "planning", "launch", "evaluation", "handoff")
# Lowest first; an arrow between packages may point down or stay on its floor, never up.
FLOORS = (("model", "data"), ("pretrain",), ("planning", "launch", "handoff", "evaluation"),
          ("scripts", "bench"))
# Entry modules: the top floor (they wire the floors together), whatever package holds them.
ENTRY_POINTS = {"pretrain.train": "entry pretrain.train"}
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


def _imported(path: str, module: str, modules) -> set:
    """The project's modules that the import statements of `path` name (anywhere in the file)."""

    def existing(name: str):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found.update(existing(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: against this module's package
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            # `from a.b import c`: the module a.b.c when there is one, else a.b.
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules
                         else existing(base) for alias in node.names)
    return {target for target in found if target and target != module}


@pytest.fixture(scope="module")
def modules():
    """{module: the project's modules it imports}."""
    paths = {_module_name(relpath): path for relpath, path in _sources()}
    return {module: _imported(path, module, paths) for module, path in paths.items()}


def _subpackage(module: str) -> str:
    """A package's direct modules are units of their own, a subpackage (pretrain.checkpoint,
    pretrain.engines, data.curation, ...) is one unit."""
    return ".".join(module.split(".")[:2])


def _package(module: str) -> str:
    return ENTRY_POINTS.get(module, module.split(".")[0])


def _collapse(graph, unit_of):
    edges = defaultdict(set)
    for module, targets in graph.items():
        for target in targets:
            if unit_of(module) != unit_of(target):
                edges[unit_of(module)].add(unit_of(target))
    return edges


def _circles(edges) -> list:
    state, stack, circles = {}, [], []

    def visit(unit):
        state[unit] = "open"
        stack.append(unit)
        for target in sorted(edges.get(unit, ())):
            if state.get(target) == "open":
                circles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[unit] = "done"

    for unit in sorted(edges):
        if unit not in state:
            visit(unit)
    return circles


def test_no_two_modules_import_each_other_even_through_others(modules):
    circles = _circles(modules)
    assert not circles, "import circles between modules:\n" + "\n".join(circles)


def test_no_circle_between_subpackages(modules):
    circles = _circles(_collapse(modules, _subpackage))
    assert not circles, "import circles between subpackages:\n" + "\n".join(circles)


def test_no_circle_between_packages(modules):
    circles = _circles(_collapse(modules, _package))
    assert not circles, "import circles between packages:\n" + "\n".join(circles)


def _floor(package: str) -> int:
    if package in ENTRY_POINTS.values():
        return len(FLOORS) - 1
    return next(i for i, floor in enumerate(FLOORS) if package in floor)


def _arrows(modules):
    """(module, imported module, their packages) of every arrow between two packages."""
    for module, targets in sorted(modules.items()):
        for target in sorted(targets):
            if _package(module) != _package(target):
                yield module, target, _package(module), _package(target)


def test_every_arrow_between_packages_points_down_the_floors(modules):
    up = [f"{module} -> {target}" for module, target, source, imported in _arrows(modules)
          if _floor(imported) > _floor(source)]
    assert not up, "imports pointing up the floors (docs/architecture.md#floors):\n" + "\n".join(up)


def test_pretrain_never_imports_evaluation_handoff_or_launch(modules):
    wrong = [f"{module} -> {target}" for module, target, source, imported in _arrows(modules)
             if source == "pretrain" and imported in ("evaluation", "handoff", "launch")]
    assert not wrong, wrong


def test_libraries_never_import_tools(modules):
    wrong = [f"{module} -> {target}" for module, target, source, imported in _arrows(modules)
             if source in LIBRARY and imported in ("scripts", "bench")]
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
