"""Tokenized corpora on disk: megatron-core indexed datasets (`.bin` tokens + `.idx` index), sharded.

- `preprocess(dataset, tokenizer_model, output_prefix, num_shards, num_workers)` tokenizes a documents
  dataset (see data/corpus.py) with `datasets.map(num_proc=...)`, appends EOD to every document and
  writes `<prefix>-00000-of-0000N.{bin,idx}` with megatron's `IndexedDatasetBuilder`. Each shard is
  written under a temp name and renamed when complete (.bin first, .idx last: an .idx means done), so
  a re-run skips finished shards and redoes a broken one.
- `list_shards(prefix)` expands a blend prefix into its shard prefixes (or the prefix itself).
- `check_shard(prefix, vocab_size)` (data/shard_check.py) checks the whole index, the files against
  each other and the token ids against the vocabulary, and raises `ShardError` naming the file.
- A manifest `<prefix>.json` records the tokenizer and counts; `check_manifest` refuses a tokenizer
  that is not the one the shards were made with.
"""

import glob
import json
import os
import re
from typing import List, Optional

import datasets
import numpy
from megatron.core.datasets.indexed_dataset import (
    DType, IndexedDatasetBuilder, get_bin_path, get_idx_path,
)
from tqdm import tqdm

from data.errors import CorpusError, DataError, ShardError
from data.shard_check import check_shard
from data.tokenizer import CodeTokenizer

__all__ = ["ShardError", "check_manifest", "check_shard", "list_shards", "manifest_path",
           "preprocess", "read_manifest", "shard_prefix"]


def shard_prefix(prefix: str, index: int, num_shards: int) -> str:
    return f"{prefix}-{index:05d}-of-{num_shards:05d}"


def list_shards(prefix: str) -> List[str]:
    """The shard prefixes behind a blend prefix, in order; every one must be present."""
    if os.path.isfile(get_idx_path(prefix)) or os.path.isfile(get_bin_path(prefix)):
        return [prefix]
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r"-(\d{5})-of-(\d{5})\.(bin|idx)$")
    found = {}
    for path in glob.glob(glob.escape(prefix) + "-*-of-*.*"):
        match = pattern.match(os.path.basename(path))
        if match:
            found.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    if not found:
        raise ShardError(
            f"no indexed dataset at {prefix!r}: neither {get_idx_path(prefix)} nor shards "
            f"{shard_prefix(prefix, 0, 1)}.idx...; check data.blend or run scripts/preprocess.py"
        )
    if len(found) > 1:
        raise ShardError(f"{prefix!r} has shards of several runs ({sorted(found)} shards); remove the stale ones")
    (num_shards, present), = found.items()
    for index in range(num_shards):
        if index not in present:
            raise ShardError(f"{shard_prefix(prefix, index, num_shards)}.idx is missing; re-run scripts/preprocess.py")
    return [shard_prefix(prefix, index, num_shards) for index in range(num_shards)]


_TOKENIZERS = {}  # one SentencePieceProcessor per worker process, loaded on first use


def _tokenize(batch, model_path: str, model_sha256: str):
    # model_sha256 is unused here: it is in fn_kwargs so that datasets' map cache key changes when
    # the tokenizer file changes under the same path.
    tokenizer = _TOKENIZERS.get(model_path) or _TOKENIZERS.setdefault(model_path, CodeTokenizer(model_path))
    ids = tokenizer.encode_batch(batch["text"])
    for document in ids:
        document.append(tokenizer.eod_id)  # EOD ends every document: the packer relies on it
    return {"ids": ids, "num_tokens": [len(document) for document in ids]}


def _write_shard(tokenized: datasets.Dataset, prefix: str, dtype) -> None:
    tmp_prefix = f"{prefix}.tmp{os.getpid()}"
    builder = IndexedDatasetBuilder(get_bin_path(tmp_prefix), dtype=dtype)
    for batch in tokenized.with_format("arrow").iter(batch_size=1000):
        column = batch.column("ids").combine_chunks()
        flat = column.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        offsets = column.offsets.to_numpy()
        for start, end in zip(offsets[:-1], offsets[1:]):
            builder.add_document(flat[start:end], [int(end - start)])
    builder.finalize(get_idx_path(tmp_prefix))
    os.replace(get_bin_path(tmp_prefix), get_bin_path(prefix))
    os.replace(get_idx_path(tmp_prefix), get_idx_path(prefix))  # last: the .idx marks completion


def preprocess(
    dataset: datasets.Dataset, tokenizer_model: str, output_prefix: str, num_shards: int = 1,
    num_workers: int = 1, progress: bool = True,
) -> List[str]:
    """Tokenize `dataset["text"]` into `num_shards` indexed datasets; return their prefixes."""
    if len(dataset) == 0:
        raise CorpusError(f"the corpus for {output_prefix} has no documents: check --corpus (a folder "
                          f"with files of --extensions, or jsonl/parquet files with rows)")
    if num_shards < 1 or num_workers < 1:
        raise DataError(f"num_shards={num_shards}, num_workers={num_workers}: both must be >= 1")
    tokenizer = CodeTokenizer(tokenizer_model)
    num_shards = min(num_shards, len(dataset))
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    check_manifest(output_prefix, tokenizer, num_shards)
    # Written before any shard, so a re-run of an interrupted job with another tokenizer is refused.
    _write_manifest(output_prefix, tokenizer, num_shards, len(dataset), num_tokens=None)
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    # Contiguous row ranges keep the corpus order: shard i holds rows [bounds[i], bounds[i+1]).
    bounds = [len(dataset) * i // num_shards for i in range(num_shards + 1)]
    prefixes = [shard_prefix(output_prefix, i, num_shards) for i in range(num_shards)]
    pending = []
    for index, prefix in enumerate(prefixes):
        try:
            check_shard(prefix)  # finished by an earlier run: keep it
        except ShardError:
            pending.append(index)
    if pending:
        # One map over all pending rows: one worker pool for the whole job, not one per shard.
        rows = numpy.concatenate([numpy.arange(bounds[i], bounds[i + 1]) for i in pending])
        todo = dataset if len(rows) == len(dataset) else dataset.select(rows)
        tokenized = todo.map(
            _tokenize, batched=True, batch_size=64, remove_columns=todo.column_names,
            num_proc=num_workers if num_workers > 1 and len(todo) >= num_workers else None,
            fn_kwargs={"model_path": os.path.abspath(tokenizer_model), "model_sha256": tokenizer.sha256},
            desc=f"tokenize {os.path.basename(output_prefix)} ({len(pending)}/{num_shards} shards)",
        )
        offset = 0
        for index in tqdm(pending, desc=f"write {os.path.basename(output_prefix)} shards", disable=not progress):
            count = bounds[index + 1] - bounds[index]
            _write_shard(tokenized.select(range(offset, offset + count)), prefixes[index], dtype)
            offset += count
    # The full check (and the token pass, cached next to each shard) now, while the files are in
    # the page cache: the trainer then only reads the cached result.
    num_tokens = sum(check_shard(prefix, tokenizer.vocab_size) for prefix in prefixes)
    _write_manifest(output_prefix, tokenizer, num_shards, len(dataset), num_tokens)
    return prefixes


MANIFEST_KEYS = ("tokenizer_model", "tokenizer_sha256", "vocab_size", "num_shards", "num_documents",
                 "num_tokens")


def manifest_path(prefix: str) -> str:
    return f"{prefix}.json"


def _write_manifest(prefix, tokenizer, num_shards, num_documents, num_tokens) -> None:
    manifest = {"tokenizer_model": os.path.abspath(tokenizer.model_path),
                "tokenizer_sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size,
                "num_shards": num_shards, "num_documents": num_documents, "num_tokens": num_tokens}
    tmp_path = f"{manifest_path(prefix)}.tmp{os.getpid()}"
    with open(tmp_path, "w") as stream:
        json.dump(manifest, stream, indent=2)
    os.replace(tmp_path, manifest_path(prefix))


_LOST_MANIFEST = ("delete the shards (<prefix>-*) and the manifest and re-run scripts/preprocess.py; "
                  "or, if you know they match data.tokenizer_model, delete only the manifest")


def read_manifest(prefix: str) -> Optional[dict]:
    """The manifest of a preprocessed corpus, None if it has none (plain megatron datasets made
    elsewhere); ShardError if it is damaged."""
    path = manifest_path(prefix)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as stream:
            manifest = json.load(stream)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShardError(f"{path} (the manifest of {prefix}) is not readable JSON ({err}). It "
                         f"records which tokenizer made the shards: {_LOST_MANIFEST}")
    missing = [key for key in MANIFEST_KEYS if key not in (manifest if isinstance(manifest, dict) else {})]
    if missing:
        raise ShardError(f"{path} (the manifest of {prefix}) lacks {', '.join(missing)}. It records "
                         f"which tokenizer made the shards: {_LOST_MANIFEST}")
    return manifest


def check_manifest(prefix: str, tokenizer: CodeTokenizer, num_shards: Optional[int] = None) -> None:
    """Shards made with another tokenizer (or shard count) would be silently wrong: refuse them."""
    manifest = read_manifest(prefix)
    if manifest is None:
        return
    if manifest["tokenizer_sha256"] != tokenizer.sha256:
        raise ShardError(
            f"{prefix} was tokenized with {manifest['tokenizer_model']} (sha256 "
            f"{str(manifest['tokenizer_sha256'])[:12]}), not {tokenizer.model_path} (sha256 "
            f"{tokenizer.sha256[:12]}); use that tokenizer or delete {prefix}-* and re-run preprocessing"
        )
    if num_shards is not None and manifest["num_shards"] != num_shards:
        raise ShardError(
            f"{prefix} was written as {manifest['num_shards']} shards, now {num_shards} requested; "
            f"delete {prefix}-* and {manifest_path(prefix)} to re-shard"
        )
