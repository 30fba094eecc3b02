"""Corpus readers: every corpus becomes a `datasets.Dataset` with a `text` column (and `path` when known).

- `read_jsonl(paths, text_key)` / `read_parquet(paths, text_key)`: files with a text column of any name.
- `read_source_folder(root, extensions)`: one document per source file, its relative path as metadata.
- `read_corpus(spec, text_key, extensions)`: picks one of the above from what `spec` is.
- `stdlib_corpus(...)`: the embedded default, the Python standard library's own `.py` sources, split
  into train/valid by a stable hash of each file's path (so adding a file never moves another one).
"""

import glob
import gzip
import hashlib
import json
import logging
import os
import sysconfig
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import datasets
import pyarrow
from datasets.exceptions import DatasetGenerationError

from data.errors import CorpusError, DataError, MissingColumnError, MissingDataError
from data.source_files import SkippedEntry, display_name, entry_problem, read_regular, text_name

logger = logging.getLogger(__name__)

SOURCE_EXTENSIONS = (".py",)
SOURCE_FEATURES = datasets.Features({"text": datasets.Value("string"), "path": datasets.Value("string")})
NAMES_SHOWN = 20  # skipped files named in a warning; the rest are counted


def _as_list(paths) -> List[str]:
    paths = [paths] if isinstance(paths, str) else list(paths)
    files = [f for p in paths for f in (sorted(glob.glob(p)) if glob.has_magic(p) else [p])]
    missing = [f for f in files if not os.path.lexists(f)]
    if missing or not files:
        raise MissingDataError(f"corpus files not found: {missing or paths}; check the path or glob "
                               f"(--corpus, or the corpus spec)")
    odd = [f"{display_name(f)} ({entry_problem(f)})" for f in files if entry_problem(f)]
    if odd:  # a fifo would block datasets' reader for ever; a dangling link fails deep inside it
        raise CorpusError(f"corpus files that are not regular readable files: {_names(odd)}; "
                          f"give regular .jsonl/.parquet files (--corpus)")
    return files


def _select_text(dataset: datasets.Dataset, text_key: str, source: str) -> datasets.Dataset:
    if text_key not in dataset.column_names:
        raise MissingColumnError(
            f"{source} has no column {text_key!r} (columns: {dataset.column_names}); "
            f"pass the right text column name (--text-key / text_key=...)"
        )
    keep = [text_key] + (["path"] if "path" in dataset.column_names else [])
    dataset = dataset.select_columns(keep)
    return dataset.rename_column(text_key, "text") if text_key != "text" else dataset


def _lines(path: str):
    """(line number, raw bytes) of a jsonl file, gzip or not."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as stream:
        yield from enumerate(stream, 1)


def _record_problem(record, text_key: str) -> Optional[str]:
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not an object with a {text_key!r} key"
    if record.get(text_key) is None:
        return f"has no {text_key!r} value (keys: {sorted(record)[:10]})"
    if not isinstance(record[text_key], str):
        return f"has a {type(record[text_key]).__name__} as {text_key!r}, not a string"
    return None


def _json_array_problem(path: str, text_key: str) -> Optional[str]:
    """A .json file holding one array of records (datasets reads those too)."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as stream:
            records = json.load(stream)
    except (ValueError, OSError):
        return None
    if not isinstance(records, list):
        return None
    for number, record in enumerate(records):
        problem = _record_problem(record, text_key)
        if problem:
            return f"{path} record {number} {problem}"
    return ""


def _first_bad_record(files: List[str], text_key: str) -> Optional[str]:
    """Where the first unreadable or unusable record is: `<file> line <n> <problem>`, or None."""
    for path in files:
        for number, raw in _lines(path):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                return f"{path} line {number} is not UTF-8 ({err.reason} at byte {err.start})"
            except json.JSONDecodeError as err:
                if number == 1 and path.endswith((".json", ".json.gz")):
                    problem = _json_array_problem(path, text_key)
                    if problem is not None:
                        if problem:
                            return problem
                        break  # a valid array file: the next one
                return f"{path} line {number} is not valid JSON ({err.msg} at column {err.colno})"
            problem = _record_problem(record, text_key)
            if problem:
                return f"{path} line {number} {problem}"
    return None


def _is_string(column) -> bool:
    return pyarrow.types.is_string(column.type) or pyarrow.types.is_large_string(column.type)


def _valid_utf8(column) -> bool:
    """Arrow's json and parquet readers take invalid UTF-8 into a string column unchecked; it
    would fail later, deep in a tokenizer worker (UnicodeDecodeError, a traceback)."""
    try:
        for chunk in column.chunks:
            chunk.validate(full=True)
    except pyarrow.ArrowInvalid:
        return False
    return True


def _check_texts(dataset: datasets.Dataset, files: List[str], text_key: str, locate) -> None:
    """Every row must have a string text: a null, a number or invalid UTF-8 fails later, deep in a
    tokenizer worker."""
    column = dataset.data.column("text")
    if column.null_count == 0 and _is_string(column) and _valid_utf8(column):
        return
    found = locate(files, text_key) or (f"{', '.join(files)}: column {text_key!r} is {column.type} "
                                        f"with {column.null_count} empty rows")
    raise CorpusError(f"{found}; every record needs a string {text_key!r}: fix or drop those records "
                      f"(or name the right text column: --text-key / text_key)")


def read_jsonl(paths, text_key: str = "text", cache_dir: str = None) -> datasets.Dataset:
    files = _as_list(paths)
    try:
        dataset = datasets.load_dataset("json", data_files=files, split="train", cache_dir=cache_dir)
    except DatasetGenerationError as err:
        found = (_first_bad_record(files, text_key)
                 or f"{', '.join(files)} cannot be read as JSON lines ({err.__cause__ or err})")
        raise CorpusError(f"{found}; fix or remove that record (one JSON object per line, each with a "
                          f"string {text_key!r})") from None
    dataset = _select_text(dataset, text_key, ", ".join(files))
    _check_texts(dataset, files, text_key, _first_bad_record)
    return dataset


def _first_null_row(files: List[str], text_key: str) -> Optional[str]:
    import pyarrow.parquet

    for path in files:
        column = pyarrow.parquet.read_table(path, columns=[text_key]).column(text_key)
        if column.null_count:
            row = int(column.is_null().to_numpy(zero_copy_only=False).argmax())
            return f"{path} row {row} has no {text_key!r} value"
        if not _is_string(column):
            return f"{path} column {text_key!r} holds {column.type}, not strings"
        if not _valid_utf8(column):
            return f"{path} row {_first_invalid_utf8(column)} is not UTF-8"
    return None


def _first_invalid_utf8(column) -> int:
    values = column.cast(pyarrow.large_binary()).to_pylist()
    for row, value in enumerate(values):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return row
    return -1


def read_parquet(paths, text_key: str = "text", cache_dir: str = None) -> datasets.Dataset:
    files = _as_list(paths)
    try:
        dataset = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cache_dir)
    except DatasetGenerationError as err:
        raise CorpusError(f"{', '.join(files)} cannot be read as parquet ({err.__cause__ or err}); "
                          f"re-export the file(s) or remove the damaged one") from None
    dataset = _select_text(dataset, text_key, ", ".join(files))
    _check_texts(dataset, files, text_key, _first_null_row)
    return dataset


def list_source_files(
    root: str, extensions: Sequence[str] = SOURCE_EXTENSIONS, exclude_dirs: Iterable[str] = ()
) -> List[str]:
    """Relative paths of the source files under `root`, sorted so the document order is stable."""
    exclude = set(exclude_dirs)
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in exclude)
        for name in files:
            if name.endswith(tuple(extensions)):
                found.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(found)


def source_documents(root: str, files: List[str]):
    """{"text", "path"} of each UTF-8 file of `files` (paths relative to `root`), read exactly as
    written; the others are skipped (read_source_folder names them)."""
    for relpath in files:
        text, _ = _read_text(os.path.join(root, relpath))
        if text is not None:
            yield {"text": text, "path": text_name(relpath)}


def _read_text(path: str) -> Tuple[Optional[str], Optional[str]]:
    """(text, None), or (None, why it is left out). Never blocks and never raises for what a folder
    may hold: a fifo, a socket, a dangling link, an unreadable file (data/source_files.py)."""
    try:
        raw = read_regular(path)
    except SkippedEntry as entry:
        return None, entry.detail
    try:
        # Decoded as written (\r\n kept): the tokenizer must round-trip the file exactly. Not UTF-8
        # (a legacy latin-1 file, a binary with a source extension): left out; guessing another
        # encoding would train on mojibake.
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "not UTF-8"


def _problems(root: str, files: List[str]) -> List[str]:
    """`name (why)` of each file of `files` that source_documents leaves out."""
    found = []
    for relpath in files:
        _, problem = _read_text(os.path.join(root, relpath))
        if problem is not None:
            found.append(f"{display_name(relpath)} ({problem})")
    return found


def _names(paths: List[str]) -> str:
    shown = ", ".join(paths[:NAMES_SHOWN])
    return shown + (f" and {len(paths) - NAMES_SHOWN} more" if len(paths) > NAMES_SHOWN else "")


def read_source_folder(
    root: str,
    extensions: Sequence[str] = SOURCE_EXTENSIONS,
    exclude_dirs: Iterable[str] = (),
    files: List[str] = None,
    cache_dir: str = None,
) -> datasets.Dataset:
    """A folder of source files as documents; streamed to Arrow, so memory stays flat."""
    files = list_source_files(root, extensions, exclude_dirs) if files is None else files
    if not files:
        raise MissingDataError(f"no {list(extensions)} files under {root}; check the folder or the "
                               f"extensions (--extensions)")
    # datasets caches from_generator by its arguments only; the stamp (sizes, mtimes) makes an
    # edited file produce a new cache entry instead of a stale one.
    stamp = hashlib.sha256()
    for relpath in files:
        try:
            info = os.stat(os.path.join(root, relpath))
            line = f"{relpath}\0{info.st_size}\0{info.st_mtime_ns}\n"
        except OSError as err:  # a dangling symlink, a loop: skipped when read, named below
            line = f"{relpath}\0{err.errno}\n"
        stamp.update(line.encode("utf-8", "surrogateescape"))
    try:
        dataset = datasets.Dataset.from_generator(
            source_documents,
            gen_kwargs={"root": root, "files": files},
            features=SOURCE_FEATURES,  # declared: a folder whose every file is skipped is still a table
            cache_dir=cache_dir,
            fingerprint=stamp.hexdigest()[:32],
        )
    except (DatasetGenerationError, ValueError) as err:
        if isinstance(err.__cause__, DataError):
            raise err.__cause__ from None
        # datasets cannot make a table of no rows: say why there are none, if that is why.
        problems = _problems(root, files)
        if len(problems) == len(files):
            raise CorpusError(
                f"none of the {len(files)} files under {root} is a readable UTF-8 text file "
                f"({_names(problems)}); convert them (iconv -f <their encoding> -t utf-8) or point "
                f"the corpus at UTF-8 sources") from None
        raise
    # The files not in the table are named with the reason on every call (also when the table
    # comes from datasets' cache and no file was read).
    kept = set(dataset["path"])
    skipped = sorted(relpath for relpath in files if text_name(relpath) not in kept)
    if skipped:
        logger.warning("%s: skipped %d of %d files: %s. Convert files that are not UTF-8 (iconv -f "
                       "<their encoding> -t utf-8) to include them", root, len(skipped), len(files),
                       _names(_problems(root, skipped)))
    return dataset


def read_corpus(
    spec: str, text_key: str = "text", extensions: Sequence[str] = SOURCE_EXTENSIONS,
    cache_dir: str = None,
) -> datasets.Dataset:
    """A folder, `*.jsonl`/`*.json` or `*.parquet` file(s) (glob allowed) as a documents dataset."""
    if os.path.isdir(spec):
        return read_source_folder(spec, extensions, cache_dir=cache_dir)
    if spec.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        return read_jsonl(spec, text_key, cache_dir)
    if spec.endswith(".parquet"):
        return read_parquet(spec, text_key, cache_dir)
    raise CorpusError(f"corpus {spec!r} is neither a folder nor .jsonl/.json/.parquet file(s); "
                      f"give one of those (globs allowed)")


def is_valid_path(relpath: str, valid_fraction: float) -> bool:
    """Stable train/valid assignment: sha1 of the path, independent of file order or count."""
    bucket = int(hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < valid_fraction


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def stdlib_files(exclude_dirs: Iterable[str], max_files: int = 0) -> List[str]:
    """The stdlib's own modules. Skipped, as noise for a code model: installed third-party packages
    (site-packages: not the stdlib, and differ per machine), the test suites (deliberately broken
    syntax, odd encodings, huge literal fixtures), generated tables (encodings/ codec maps,
    pydoc_data topics, _sysconfigdata*). `max_files` takes an evenly spaced subset (for tests)."""
    files = [
        f for f in list_source_files(stdlib_root(), (".py",), exclude_dirs)
        if not os.path.basename(f).startswith("_sysconfigdata")
    ]
    if max_files and len(files) > max_files:
        step = len(files) / max_files
        files = [files[int(i * step)] for i in range(max_files)]
    return files


def stdlib_corpus(
    exclude_dirs: Iterable[str], valid_fraction: float, max_files: int = 0, cache_dir: str = None
) -> Dict[str, datasets.Dataset]:
    """{"train": Dataset, "valid": Dataset} of the stdlib sources, split by path hash."""
    files = stdlib_files(exclude_dirs, max_files)
    split: Tuple[List[str], List[str]] = ([], [])
    for relpath in files:
        split[is_valid_path(relpath, valid_fraction)].append(relpath)
    if not split[1]:  # tiny test corpora: keep at least one validation file
        split[1].append(split[0].pop())
    root = stdlib_root()
    return {
        "train": read_source_folder(root, files=split[0], cache_dir=cache_dir),
        "valid": read_source_folder(root, files=split[1], cache_dir=cache_dir),
    }
