"""Command-line corpus selection shared by scripts/ (make_corpus, train_tokenizer, preprocess)."""

import argparse

import datasets

from data.config import DataConfig
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
