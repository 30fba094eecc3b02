"""Every usage line in the tools' module docstrings starts and parses its arguments (issue 19).

A usage line is a line of a module docstring under scripts/, bench/, launch/, pretrain/, planning/,
handoff/, evaluation/ or data/ that starts (after its indentation and any VAR=value) with python or
.venv/bin/python running a tool: `-m scripts.X` or `scripts/X.py`, the same for bench/ and launch/.
Lines indented deeper than it (or inside a quote it opened) continue it; `#` starts its comment.
The docstrings are read each time the test runs: a new usage line is checked without editing it.

How, cheaply: one child process runs each tool as `__main__`, the way `python -m X` and `python
path/X.py` do (runpy; a script's folder first on sys.path), first with `--help` (it must exit 0 and
print its usage), then with each usage line's arguments, stopped right after the tool's own argparse
parser accepted them (nothing after the parse runs). Placeholders in a usage line: an optional
`[...]` group is parsed too when it holds an option or an override and no `...`; a group of plain
words (`[hydra overrides]`) stands for free arguments and is left out; `a|b` is a; `X...` is X; an
ALLCAPS value of a typed option (`--limit K`) gets a value of that type (1, 1.0, its first choice,
or the first of those its own type function accepts).
launch.slurm reads its arguments without argparse: a `submit` line is checked by its dry run (the
config composed and validated, the sbatch script rendered, nothing submitted).
"""

import argparse
import ast
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.fixtures import REPO, subprocess_env
from tests.tool_runner import run_jobs

PACKAGES = ("scripts", "bench", "launch", "pretrain", "planning", "handoff", "evaluation", "data")
TOOL = r"(?:-m\s+((?:scripts|bench|launch)\.\w+)|((?:scripts|bench|launch)/\w+\.py))"
USAGE = re.compile(rf"^(\s*)(?:[A-Z_][A-Z0-9_]*=\S+\s+)*(?:\S*/)?python3?\s+{TOOL}(.*)$")
# Tools that read their arguments without argparse: the arguments to check instead (None: skip).
WITHOUT_ARGPARSE = {
    "launch.slurm": lambda args: [*args, "--dry-run"] if args[:1] == ["submit"] else None,
}


def usage_lines() -> list:
    """{where, program, module or path, args} of every usage line."""
    found = []
    for package in PACKAGES:
        for folder, _, names in sorted(os.walk(os.path.join(REPO, package))):
            for name in sorted(n for n in names if n.endswith(".py")):
                path = os.path.join(folder, name)
                doc = ast.get_docstring(ast.parse(open(path).read()), clean=False) or ""
                found += _usages_in(doc, os.path.relpath(path, REPO))
    return found


def _usages_in(doc: str, where: str) -> list:
    lines, found = doc.splitlines(), []
    for i, line in enumerate(lines):
        match = USAGE.match(line)
        if not match:
            continue
        indent, module, path, text = len(match.group(1)), match.group(2), match.group(3), match.group(4)
        for following in lines[i + 1:]:
            deeper = following.strip() and len(following) - len(following.lstrip()) > indent
            if not (deeper or _open_quote(text) or text.rstrip().endswith("\\")):
                break
            text = text.rstrip().rstrip("\\") + "\n" + following
        program = module or path[:-3].replace("/", ".")
        found.append(dict(where=f"{where}: {line.strip()}", program=program, module=module,
                          path=path, args=placeholders(shlex.split(text, comments=True))))
    return found


def _open_quote(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return True
    return False


def placeholders(words: list) -> list:
    """The usage line's words as arguments to parse (the rules in the module docstring)."""
    args, i = [], 0
    while i < len(words):
        group = [words[i]]
        if words[i].startswith("["):
            while not group[-1].endswith("]") and i + 1 < len(words):
                i += 1
                group.append(words[i])
            group = [group[0][1:], *group[1:-1], group[-1][:-1]] if len(group) > 1 else [
                group[0][1:-1]]
            free = not any(w.startswith("-") or "=" in w for w in group)
            if free or any(w.endswith("...") for w in group):
                group = []
        args += [w[:-3] if w.endswith("...") else w.split("|")[0] if re.fullmatch(r"[\w.|-]+", w)
                 else w for w in group if w != "..."]
        i += 1
    return args


USAGES = usage_lines()
PROGRAMS = {usage["program"]: usage for usage in reversed(USAGES)}  # each tool's first usage line


def _jobs() -> list:
    """What the child runs: `--help` of every tool, then every usage line's arguments."""
    jobs = [dict(usage, args=["--help"], id=f"help {program}") for program, usage in PROGRAMS.items()]
    for number, usage in enumerate(USAGES):
        dry_run = WITHOUT_ARGPARSE.get(usage["program"])
        args = dry_run(usage["args"]) if dry_run else usage["args"]
        if args is not None:
            jobs.append(dict(usage, args=args, id=f"line {number}"))
    return jobs


@pytest.fixture(scope="module")
def results() -> dict:
    done = subprocess.run([sys.executable, "-c", "from tests.test_usage_docstrings import child; "
                           "child()"], input=json.dumps(_jobs()), cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {result["id"]: result for result in json.loads(done.stdout.splitlines()[-1])}


@pytest.mark.slow
@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_each_tool_starts_and_prints_its_usage(results, program):
    result = results[f"help {program}"]
    assert result["status"] == "exit 0" and result["output"].strip(), result


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(USAGES)), ids=lambda n: re.sub(
    r"[^\w.=/-]+", "_", USAGES[n]["where"])[:80])
def test_each_usage_line_parses(results, number):
    usage = USAGES[number]
    result = results.get(f"line {number}")
    if result is None:
        pytest.skip(f"{usage['where']}: {usage['program']} runs this inside a SLURM job only")
    expected = "exit 0" if usage["program"] in WITHOUT_ARGPARSE else "parsed"
    assert result["status"] == expected, f"{usage['where']}\nargs {result['args']}\n{result}"


def test_the_docstrings_hold_usage_lines_of_every_kind():
    """The reader finds them: scripts as modules and as paths, bench, launch, continued lines."""
    kinds = {(u["program"].split(".")[0], bool(u["module"])) for u in USAGES}
    assert {("scripts", True), ("scripts", False), ("bench", True), ("bench", False),
            ("launch", True)} <= kinds
    evaluate = next(u for u in USAGES if u["program"] == "scripts.evaluate")
    assert "--sandbox" in evaluate["args"] and "--samples-per-task" in evaluate["args"]


# -- the child process ---------------------------------------------------------------------------
class _Parsed(BaseException):
    """Raised right after the tool's parser accepted its arguments (not an Exception: the tools'
    own error handling does not catch it)."""


def child() -> None:
    """Run the jobs on stdin; print one JSON list of {id, args, status, output}."""
    jobs = json.load(sys.stdin)
    _stop_after_parsing()
    print(json.dumps(run_jobs(jobs, stop_on=((_Parsed, "parsed"),), keep=2000)))


def _stop_after_parsing() -> None:
    """argparse's parse_args/parse_known_args: the outermost call parses (placeholder values
    typed), then raises _Parsed; the calls argparse makes inside it run as usual."""
    original = {name: getattr(argparse.ArgumentParser, name)
                for name in ("parse_args", "parse_known_args")}
    depth = [0]

    def stopping(name):
        def parse(self, args=None, namespace=None):
            if depth[0]:
                return original[name](self, args, namespace)
            depth[0] += 1
            try:
                original[name](self, _typed(self, sys.argv[1:] if args is None else args), namespace)
            finally:
                depth[0] -= 1
            raise _Parsed()
        return parse

    for name in original:
        setattr(argparse.ArgumentParser, name, stopping(name))


def _typed(parser, args: list) -> list:
    """An ALLCAPS placeholder after a typed option becomes a value of its type."""
    options = {string: action for action in parser._actions for string in action.option_strings}
    args = list(args)
    for i in range(1, len(args)):
        action = options.get(args[i - 1])
        if action and action.nargs != 0 and re.fullmatch(r"[A-Z][A-Z0-9_]*", args[i]):
            args[i] = (str(next(iter(action.choices))) if action.choices else
                       {int: "1", float: "1.0"}.get(action.type) or _accepted(action.type, args[i]))
    return args


def _accepted(kind, placeholder: str) -> str:
    """A tool's own type function (a checked range): the first of "1", "1.0" it accepts."""
    for value in ("1", "1.0"):
        try:
            kind(value)
            return value
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            continue
    return placeholder
