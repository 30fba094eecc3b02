"""The guard of a rule of pretrain/ (docs/architecture.md): no function or method takes more than
five positional parameters (self and cls not counted). A longer call is a list of values whose order
a reader must remember: pass a config node, a small object, or keyword-only arguments instead."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_POSITIONAL = 5


def positional_parameters(function: ast.FunctionDef) -> list:
    names = [a.arg for a in function.args.posonlyargs + function.args.args]
    return names[1:] if names[:1] in (["self"], ["cls"]) else names


def too_long(source: str, path: str) -> list:
    """`path:line name(n positional)` for each function in `source` past the limit."""
    found = []
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = positional_parameters(node)
            if len(names) > MAX_POSITIONAL:
                found.append(f"{path}:{node.lineno} {node.name}({len(names)} positional: "
                             f"{', '.join(names)})")
    return found


def _python_files(folder: str):
    for root, _, names in os.walk(os.path.join(REPO, folder)):
        for name in sorted(names):
            if name.endswith(".py"):
                yield os.path.join(root, name)


def test_no_function_in_pretrain_takes_more_than_five_positional_parameters():
    found = []
    for path in _python_files("pretrain"):
        with open(path, encoding="utf-8") as stream:
            found += too_long(stream.read(), os.path.relpath(path, REPO))
    assert not found, ("more than five positional parameters (make the rest keyword-only after `*`, "
                       "or pass a config node or a small object):\n" + "\n".join(found))


@pytest.mark.parametrize("source, expected", [
    ("def f(a, b, c, d, e): pass", []),
    ("def f(a, b, c, d, e, *, g=1, h=2): pass", []),
    ("class C:\n    def m(self, a, b, c, d, e): pass", []),
    ("def f(a, b, c, d, e, f=1): pass", ["x.py:1 f(6 positional: a, b, c, d, e, f)"]),
    ("def f(a, b, c, d, e, f, /): pass", ["x.py:1 f(6 positional: a, b, c, d, e, f)"]),
    ("class C:\n    def m(self, a, b, c, d, e, f): pass",
     ["x.py:2 m(6 positional: a, b, c, d, e, f)"]),
])
def test_the_guard_counts_positional_parameters(source, expected):
    assert too_long(source, "x.py") == expected
