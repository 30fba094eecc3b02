"""Corpus readers: every corpus becomes a `datasets.Dataset` with a `text` column (and `path` when known).

- `read_jsonl(paths, text_key)` / `read_parquet(paths, text_key)`: files with a text column of any name.
- `read_source_folder(root, extensions)`: one document per source file, its relative path as metadata.
- `read_corpus(spec, text_key, extensions)`: picks one of the above from what `spec` is.
- `stdlib_corpus(...)`: the embedded default, the Python standard library's own `.py` sources, split
  into train/valid by a stable hash of each file's path (so adding a file never moves another one).
"""

import glob
import hashlib
import os
import sysconfig
from typing import Dict, Iterable, List, Sequence, Tuple

import datasets

SOURCE_EXTENSIONS = (".py",)


def _as_list(paths) -> List[str]:
    paths = [paths] if isinstance(paths, str) else list(paths)
    files = [f for p in paths for f in (sorted(glob.glob(p)) if glob.has_magic(p) else [p])]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing or not files:
        raise FileNotFoundError(f"corpus files not found: {missing or paths}")
    return files


def _select_text(dataset: datasets.Dataset, text_key: str, source: str) -> datasets.Dataset:
    if text_key not in dataset.column_names:
        raise KeyError(
            f"{source} has no column {text_key!r} (columns: {dataset.column_names}); "
            f"pass the right text column name (--text-key / text_key=...)"
        )
    keep = [text_key] + (["path"] if "path" in dataset.column_names else [])
    dataset = dataset.select_columns(keep)
    return dataset.rename_column(text_key, "text") if text_key != "text" else dataset


def read_jsonl(paths, text_key: str = "text", cache_dir: str = None) -> datasets.Dataset:
    files = _as_list(paths)
    dataset = datasets.load_dataset("json", data_files=files, split="train", cache_dir=cache_dir)
    return _select_text(dataset, text_key, ", ".join(files))


def read_parquet(paths, text_key: str = "text", cache_dir: str = None) -> datasets.Dataset:
    files = _as_list(paths)
    dataset = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cache_dir)
    return _select_text(dataset, text_key, ", ".join(files))


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


def _read_files(root: str, files: List[str]):
    for relpath in files:
        try:
            with open(os.path.join(root, relpath), encoding="utf-8", newline="") as stream:
                # newline="" keeps \r\n as written: the tokenizer must round-trip the file exactly.
                yield {"text": stream.read(), "path": relpath}
        except UnicodeDecodeError:
            continue  # a few legacy files are latin-1 on purpose; code corpora are UTF-8


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
        raise FileNotFoundError(f"no {list(extensions)} files under {root}")
    # datasets caches from_generator by its arguments only; the stamp (sizes, mtimes) makes an
    # edited file produce a new cache entry instead of a stale one.
    stamp = hashlib.sha256()
    for relpath in files:
        info = os.stat(os.path.join(root, relpath))
        stamp.update(f"{relpath}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return datasets.Dataset.from_generator(
        _read_files,
        gen_kwargs={"root": root, "files": files},
        cache_dir=cache_dir,
        fingerprint=stamp.hexdigest()[:32],
    )


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
    raise ValueError(f"corpus {spec!r} is neither a folder nor .jsonl/.json/.parquet file(s)")


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
