"""docs/ stays true to the tree: every repository path the documents name in backticks exists,
and so does every file the code's comments and docstrings name; docs/architecture.md names every
top-level folder, every package and every module of the trainer (pretrain/); every link and
`docs/<name>.md#<section>` citation (in the documents and in the code) resolves to a file and a
heading; and no file cites the design notes kept outside the repository (../shared/), which a
user's clone does not have."""

import glob
import io
import os
import re
import subprocess
import tokenize

import pytest

from tests.fixtures import REPO

DOCS = sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
TOP_LEVEL = set(os.listdir(REPO))
BACKTICKED = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
CITATION = re.compile(r"\bdocs/([\w-]+\.md)(#[\w-]+)?")
# Citations of the outside notes whose content moved into docs/ (the spec and the architecture).
OUTSIDE_NOTES = re.compile(r"\bPLT_SPEC\b|\bARCHITECTURE(\.md)?\b")


def _text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as stream:
        return stream.read()


def heading_anchors(path: str) -> set:
    """The anchors GitHub gives the headings of a Markdown file: lower case, punctuation dropped
    (hyphens and underscores kept), spaces as hyphens."""
    anchors = set()
    for line in _text(path).splitlines():
        found = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if found:
            title = re.sub(r"[^\w\- ]", "", found.group(1).lower())
            anchors.add(title.replace(" ", "-"))
    return anchors


def repository_paths(span: str) -> list:
    """The repository paths a backticked span names: words whose first folder is one of the
    repository's top-level entries (`model/...`, `tests/...`); placeholders such as
    `<run_dir>/config.yaml` or a checkpoint's `rng/` are not. `python -m pkg.mod` names a module."""
    words = span.split()
    if words[:2] == ["python", "-m"] and len(words) > 2:
        module = words[2].replace(".", "/")
        return [module + ".py" if os.path.isfile(os.path.join(REPO, module + ".py")) else module]
    paths = []
    for word in words:
        word = word.strip(",;:()[]").split("#")[0]
        if "/" in word and word.split("/")[0] in TOP_LEVEL and not word.startswith("."):
            paths.append(word)
    return paths


def _items(text: str):
    """The text of each list item or paragraph (a line starting with "- ", a blank line or a
    heading starts a new one)."""
    item = []
    for line in text.splitlines():
        starts = line.lstrip().startswith(("- ", "#")) or not line.strip()
        if starts and item:
            yield "\n".join(item)
            item = []
        if line.strip():
            item.append(line)
    if item:
        yield "\n".join(item)


def named_paths(text: str) -> list:
    """Every repository path the text names in backticks. A bare module or folder name
    (`checkpointer.py`, `curation/`) is read in the folder its list item named last
    (`pretrain/checkpoint/`: ... `checkpointer.py`); a bare module name in an item that named no folder
    must exist somewhere in the repository."""
    paths = []
    for item in _items(text):
        folder = None
        for span in BACKTICKED.findall(item):
            found = repository_paths(span)
            paths += found
            if len(found) == 1 and found[0].endswith("/") and found[0] == span:
                folder = found[0]
            elif not found and folder is not None and re.fullmatch(r"\w+\.py|\w+/", span):
                paths.append(folder + span)
            elif not found and re.fullmatch(r"\w+\.py", span) and not glob.glob(
                    os.path.join(REPO, "**", span), recursive=True):
                paths.append(span)
    return paths


def _exists(path: str) -> bool:
    return bool(glob.glob(os.path.join(REPO, path))) if "*" in path else os.path.exists(
        os.path.join(REPO, path))


def test_docs_exist():
    names = {os.path.basename(p) for p in DOCS}
    assert {"README.md", "spec.md", "architecture.md", "checkpoint_format.md",
            "run_folder.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=os.path.basename)
def test_every_named_path_exists(doc):
    text = _text(doc)
    missing = sorted({path for path in named_paths(text) if not _exists(path)})
    assert not missing, f"{os.path.relpath(doc, REPO)} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=os.path.basename)
def test_every_link_resolves(doc):
    broken = []
    for target in LINK.findall(_text(doc)):
        if "://" in target:
            continue
        file_part, _, anchor = target.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(doc), file_part)) if file_part else doc
        if not os.path.isfile(path):
            broken.append(target)
        elif anchor and anchor not in heading_anchors(path):
            broken.append(target)
    assert not broken, f"{os.path.relpath(doc, REPO)} links to what does not exist: {broken}"


def tracked_files() -> list:
    """The repository's files (tracked, and new ones git does not ignore)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the file list comes from git")
    return [name for name in listed.stdout.splitlines()
            if os.path.isfile(os.path.join(REPO, name))
            and os.path.getsize(os.path.join(REPO, name)) < 2 << 20]


def _architecture_names() -> set:
    text = _text(os.path.join(REPO, "docs", "architecture.md"))
    return {path.rstrip("/") for path in named_paths(text)}


def test_architecture_names_every_folder_and_package():
    """A new top-level folder or package (a folder with an __init__.py, at any depth) gets its line
    in docs/architecture.md."""
    files = tracked_files()
    folders = {name.split("/")[0] for name in files if "/" in name and not name.startswith(".")}
    folders |= {os.path.dirname(name) for name in files if name.endswith("/__init__.py")}
    missing = sorted(folders - _architecture_names())
    assert not missing, f"docs/architecture.md does not describe these folders: {missing}"


def test_architecture_names_every_module_of_the_trainer():
    """pretrain/ is what a newcomer follows from the entry point: the document names each of its
    modules, so a module added, moved or renamed there changes the document too."""
    modules = {name for name in tracked_files()
               if name.startswith("pretrain/") and name.endswith(".py")
               and not name.endswith("__init__.py")}
    missing = sorted(modules - _architecture_names())
    assert not missing, f"docs/architecture.md does not name these modules of pretrain/: {missing}"


def test_citations_of_docs_resolve():
    """`docs/spec.md#decoding` in a docstring names a document and a section that exist."""
    broken = []
    for name in tracked_files():
        for line_number, line in enumerate(_text(os.path.join(REPO, name)).splitlines(), 1):
            for document, anchor in CITATION.findall(line):
                path = os.path.join(REPO, "docs", document)
                if not os.path.isfile(path) or (anchor and anchor[1:] not in heading_anchors(path)):
                    broken.append(f"{name}:{line_number}: docs/{document}{anchor}")
    assert not broken, "citations of docs/ that do not resolve:\n" + "\n".join(broken)


def _prose(name: str):
    """(line, text) of what a file says in words: a Markdown file whole; of a Python file its
    comments and triple-quoted strings (docstrings, usage and message templates)."""
    text = _text(os.path.join(REPO, name))
    if name.endswith(".md"):
        yield 1, text
        return
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        triple_quoted = token.string.lstrip("rbufRBUF")[:3] in ('"""', "'''")
        if token.type == tokenize.COMMENT or (token.type == tokenize.STRING and triple_quoted):
            yield token.start[0], token.string


def test_files_named_in_comments_and_docstrings_exist():
    """A comment or docstring that still names a file after it moved or was renamed sends its
    reader to nothing. Placeholders (`scripts/X.py`) are capitals."""
    folders = "|".join(sorted(name for name in TOP_LEVEL if not name.startswith(".")
                              and os.path.isdir(os.path.join(REPO, name))))
    named_file = re.compile(
        r"(?<![\w./-])((?:%s)/[\w/.-]*\w\.(?:py|md|yaml|sh|json))(?![\w*/-])" % folders)
    missing = []
    for name in tracked_files():
        if not name.endswith((".py", ".md")) or all(
                os.path.exists(os.path.join(REPO, path))
                for path in named_file.findall(_text(os.path.join(REPO, name)))):
            continue  # nothing to look for in its comments (tokenizing every file takes seconds)
        for line, text in _prose(name):
            for found in named_file.finditer(text):
                path = found.group(1)
                stem = os.path.splitext(os.path.basename(path))[0]
                if not stem.isupper() and not os.path.exists(os.path.join(REPO, path)):
                    missing.append(f"{name}:{line + text[:found.start()].count(chr(10))}: {path}")
    assert not missing, "comments and docstrings name files that do not exist:\n" + "\n".join(missing)


def test_no_file_cites_the_notes_outside_the_repository():
    this_file = os.path.relpath(os.path.abspath(__file__), REPO)
    found = [f"{name}:{number}: {line.strip()}"
             for name in tracked_files() if name != this_file
             for number, line in enumerate(_text(os.path.join(REPO, name)).splitlines(), 1)
             if OUTSIDE_NOTES.search(line)]
    assert not found, ("cite docs/spec.md or docs/architecture.md instead (the repository a user "
                       "clones has no ../shared/):\n" + "\n".join(found))
