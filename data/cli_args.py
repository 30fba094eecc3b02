"""Command-line corpus selection shared by scripts/ (make_corpus, train_tokenizer, preprocess)."""

import argparse
import glob
import os
import re

import datasets

from data.config import DataConfig
from data.errors import DataConfigError
from data.corpus import read_corpus, stdlib_corpus


def add_corpus_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", nargs="+", default=["stdlib:train"],
                        help="folders of source files, .jsonl/.json/.parquet files (globs ok), or "
                             "stdlib:train / stdlib:valid (the embedded default corpus)")
    parser.add_argument("--text-key", default="text", help="text column of jsonl/parquet files")
    parser.add_argument("--extensions", nargs="+", default=[".py"], help="source file extensions")
    parser.add_argument("--max-files", type=int, default=0, help="stdlib only: subset size (0 = all)")


def load_corpus(args: argparse.Namespace) -> datasets.Dataset:
    parts = []
    for spec in args.corpus:
        if spec.startswith("stdlib:"):
            cfg = DataConfig(stdlib_max_files=args.max_files)
            split = stdlib_corpus(cfg.stdlib_exclude_dirs, cfg.stdlib_valid_fraction, cfg.stdlib_max_files)
            parts.append(split[spec.split(":", 1)[1]])
        else:
            parts.append(read_corpus(spec, args.text_key, tuple(args.extensions)))
    parts = [part.select_columns(["text"]) for part in parts] if len(parts) > 1 else parts
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


# What an output prefix P writes (data/indexed.py, data/curation/): P.json (the manifest),
# P-0000i-of-0000N.bin/.idx and their .check.json, P.stats.json, P.lock, P.work/.
_OUTPUT_FILES = r"(\.json|\.stats\.json|\.lock|-\d+-of-\d+\.(bin|idx)(\.check\.json)?|\.work(/.*)?)"


def check_output_prefix(output: str, inputs, flag: str = "--output") -> None:
    """Refuse (exit 2) an output prefix that is empty (it would write `.json`, `-00000-of-...` and
    `.work/` beside the current folder) or that would write over one of the input files
    (`--corpus D/e.json --output D/e`: D/e.json is the manifest's name), before anything is read.
    `inputs`: the input specs as given (files, globs; folders and named corpora are not files)."""
    if not output.strip() or output.endswith(os.sep):
        raise DataConfigError(f"{flag} {output!r} is not a file prefix; give one such as "
                              "shards/code (it writes shards/code-00000-of-0000N.bin/.idx and "
                              "shards/code.json)")
    written = re.compile(re.escape(os.path.realpath(os.path.abspath(output))) + _OUTPUT_FILES)
    for spec in inputs:
        for path in glob.glob(spec) or [spec]:
            if os.path.isfile(path) and written.fullmatch(os.path.realpath(path)):
                raise DataConfigError(
                    f"{flag} {output} would write {path}, which is an input: a tool never writes "
                    f"where it reads. Pass an {flag} elsewhere (a prefix in another folder or of "
                    "another name)")
