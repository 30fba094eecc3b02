"""Input listings: the files of each folder or glob input, taken once at the first run and saved
as `<work>/inputs/NNN.paths` (plan.py says why), one JSON value a line:

    "src/a.py"                                  a file, relative to the input's root
    ["src/link", "symlinked_dir", "<detail>"]   an entry the listing already knows it skips

JSON, so that any name survives: a newline, a leading or trailing space, bytes that are not UTF-8
(kept as os.walk's surrogate escapes). Every entry is handed to a reader task (task r takes
entries r, r+T, ...), which reads it or skips it by name, warned and counted (readers.py); an
entry that is not a regular readable file (fifo, socket, dangling symlink, ...) is found when it
is opened (data/source_files.py). Older work folders hold one plain path a line: still read.
"""

import glob
import json
import os
from typing import Iterator, List, Optional, Tuple

from data.errors import CorpusError
from data.source_files import display_name, entry_problem

Entry = Tuple[str, Optional[Tuple[str, str]]]   # (relative path, (reason, detail) or None)
NAMES_SHOWN = 10


def _walk_folder(root: str) -> List[Entry]:
    entries: List[Entry] = []

    def unlistable(error: OSError) -> None:  # os.walk would skip such a folder silently
        entries.append((os.path.relpath(error.filename, root),
                        ("unreadable", f"a folder that cannot be listed ({error.strerror})")))

    for directory, subdirs, files in os.walk(root, onerror=unlistable):
        kept = []
        for name in sorted(subdirs):
            if name.startswith("."):
                continue  # .git, .venv, ...: version control and environments are not the corpus
            if os.path.islink(os.path.join(directory, name)):
                entries.append((os.path.relpath(os.path.join(directory, name), root), (
                    "symlinked_dir", "a symbolic link to a folder (not followed: it may loop or "
                                     "lead out of the corpus)")))
                continue
            kept.append(name)
        subdirs[:] = kept
        entries += [(os.path.relpath(os.path.join(directory, name), root), None) for name in files]
    return sorted(entries, key=lambda entry: entry[0])


def list_entries(spec) -> List[Entry]:
    """The entries of a folder or glob input (a plan.InputSpec), sorted by path. Refused (exit 3)
    when there is not one file to read: nothing to skip one by one, the whole input is wrong."""
    if spec.kind == "folder":
        entries = _walk_folder(spec.root)
    else:
        matches = sorted(glob.glob(spec.spec)) if glob.has_magic(spec.spec) else [spec.spec]
        entries = [(os.path.relpath(os.path.abspath(path), spec.root), None) for path in matches
                   if os.path.lexists(path) and not os.path.isdir(path)]
    # Short-circuits at the first regular file: one stat for a usual corpus.
    if not any(problem is None and os.path.isfile(os.path.join(spec.root, path))
               for path, problem in entries):
        shown = "; ".join(f"{display_name(path)}: "
                          f"{problem[1] if problem else entry_problem(os.path.join(spec.root, path))}"
                          for path, problem in entries[:NAMES_SHOWN])
        more = "; ..." if len(entries) > NAMES_SHOWN else ""
        what = f"{len(entries)} entries skipped: {shown}{more}" if entries else "an empty folder"
        raise CorpusError(f"--input {spec.spec!r} holds no file to read ({what}); point --input at "
                          f"a folder of source files or at jsonl/parquet files")
    return entries


def listing_text(entries: List[Entry]) -> str:
    return "".join(json.dumps(path if problem is None else [path, *problem]) + "\n"
                   for path, problem in entries)


def iter_listing(path: str) -> Iterator[Entry]:
    """The entries of a listing, streamed: a task of a corpus of millions of files holds none of
    the others' entries in memory."""
    with open(path, encoding="utf-8", errors="surrogateescape") as stream:
        for line in stream:
            line = line.rstrip("\n")
            if line.startswith(("\"", "[")):
                value = json.loads(line)
                if isinstance(value, str):
                    yield value, None
                else:
                    yield value[0], (value[1], value[2])
            elif line:
                yield line, None  # a work folder made before the JSON listing


def read_listing(path: str) -> List[Entry]:
    return list(iter_listing(path))
