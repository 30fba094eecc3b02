"""Reading README.md's code blocks into commands (tests/test_readme_commands.py runs them).

A code block, indented or fenced, is a shell block (a line starts with python, torchrun, make, pip
or bash), a Python block (it parses as Python), or text. A trailing `# [GPU]`/`# [cluster]` comment
marks a command run here by its `dry run:`; `[test suite]` marks `make test`; `[...]` is optional.
"""

import ast
import dataclasses
import os
import re
import shlex
from typing import Optional

PROGRAMS = re.compile(r"^(?:[A-Za-z_]\w*=\S*\s+)*(?:\S*/)?(python3?|torchrun|make|pip|bash)(?:\s|$)")
MARKER = re.compile(r"\[(GPU|cluster|test suite)\]")
PLACEHOLDER = re.compile(r"<([A-Za-z][\w.-]*)>")


@dataclasses.dataclass
class Command:
    line: int       # README line where it starts
    code: str       # continuation lines joined, trailing comment removed
    comment: str
    kind: str       # "shell" or "python"

    def run_form(self) -> Optional[str]:
        """What the test runs: the command, its dry run when marked [GPU]/[cluster], None for
        [test suite]."""
        marker = MARKER.search(self.comment)
        if not marker:
            return self.code
        if marker.group(1) == "test suite":
            return None
        dry_run = re.search(r"dry run:\s*(.+)$", self.comment)
        if not dry_run:
            raise ValueError(f"README.md:{self.line}: a [{marker.group(1)}] command needs `dry run: "
                             f"CMD` (or `dry run: add ARGS`) in its comment")
        form = dry_run.group(1).strip()
        return f"{self.code} {form[4:]}" if form.startswith("add ") else form


def code_blocks(markdown: str) -> list:
    """(first line number, lines, fence info) of each fenced block and each indented block."""
    lines, blocks, i = markdown.splitlines(), [], 0
    while i < len(lines):
        fence = re.match(r"^ {0,3}(`{3,}|~{3,})\s*(\w*)", lines[i])
        if fence:
            close = re.compile(rf"^ {{0,3}}{re.escape(fence.group(1))}+\s*$")
            end = next((j for j in range(i + 1, len(lines)) if close.match(lines[j])), len(lines))
            blocks.append((i + 2, lines[i + 1:end], fence.group(2)))
            i = end + 1
        elif lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            body = [line[4:] for line in lines[i:end]]
            while body and not body[-1].strip():
                body.pop()
            blocks.append((i + 1, body, ""))
            i = end
        else:
            i += 1
    return blocks


def split_comment(line: str) -> tuple:
    """(code, comment): the comment starts at a `#` that begins a word outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def readme_commands(markdown: str) -> list:
    commands = []
    for first, body, info in code_blocks(markdown):
        text = "\n".join(body)
        if any(PROGRAMS.match(line.strip()) for line in body):
            number, logical = first, ""
            for offset, line in enumerate(body):
                if not logical:
                    number = first + offset
                logical += line.strip()
                if logical.endswith("\\"):
                    logical = logical[:-1].rstrip() + " "
                    continue
                code, comment = split_comment(logical)
                if code:
                    commands.append(Command(number, code, comment, "shell"))
                logical = ""
        elif info in ("python", "py") or (not info and _parses_as_python(text)):
            commands.append(Command(first, text, "", "python"))
    return commands


def _parses_as_python(text: str) -> bool:
    try:
        ast.parse(text)
    except SyntaxError:
        return False
    return bool(text.strip())


def drop_optional(code: str) -> str:
    """The command without its `[...]` groups (a `[` that starts a word, outside quotes, up to
    the `]` that ends a word): `'.[gpu]'` and `data.blend=[[1.0,x]]` stay."""
    out, i, quote = "", 0, None
    while i < len(code):
        char = code[i]
        if quote or char in "'\"":
            quote = None if char == quote else (quote or char)
        elif char == "[" and (i == 0 or code[i - 1].isspace()):
            depth, j = 0, i
            while j < len(code):
                depth += {"[": 1, "]": -1}.get(code[j], 0)
                if depth == 0 and (j + 1 == len(code) or code[j + 1].isspace()):
                    break
                j += 1
            out, i = out.rstrip(), j + 1
            continue
        out += char
        i += 1
    return out.strip()


def program_of(words: list) -> tuple:
    """(program, its arguments): `scripts.plot_run` for `python scripts/plot_run.py` and `python -m
    scripts.plot_run`, the module for torchrun, `make train` (its arguments: the trainer's ARGS),
    `pip install`, the script for bash."""
    at = next(i for i, word in enumerate(words) if not re.match(r"^[A-Za-z_]\w*=", word))
    head, rest = os.path.basename(words[at]), words[at + 1:]
    if head.startswith("python"):
        if rest[0] == "-m":
            return rest[1], rest[2:]
        return (rest[0][:-3].replace("/", ".") if rest[0].endswith(".py") else rest[0]), rest[1:]
    if head == "torchrun":
        return rest[rest.index("-m") + 1], rest[rest.index("-m") + 2:]
    if head == "make":
        args = [word.split("=", 1)[1] for word in rest if word.startswith("ARGS=")]
        return f"make {rest[0]}", shlex.split(args[-1]) if args else []
    if head == "pip":
        return f"pip {rest[0]}", rest[1:]
    return (rest[0], rest[1:]) if head == "bash" else (head, rest)
