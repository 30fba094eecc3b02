"""Tokenized corpora on disk: megatron-core indexed datasets (`.bin` tokens + `.idx` index), sharded.

- `preprocess(dataset, tokenizer_model, output_prefix, num_shards, num_workers)` tokenizes a documents
  dataset (see data/corpus.py) with `datasets.map(num_proc=...)`, appends EOD to every document and
  writes `<prefix>-00000-of-0000N.{bin,idx}` with megatron's `IndexedDatasetBuilder`. Each shard is
  written under a temp name and renamed when complete (.bin first, .idx last: an .idx means done), so
  a re-run skips finished shards and redoes a broken one.
- `list_shards(prefix)` expands a blend prefix into its shard prefixes (or the prefix itself).
- `check_shard(prefix)` checks the files against each other and raises `ShardError` naming the file.
- A manifest `<prefix>.json` records the tokenizer and counts; `check_manifest` refuses a tokenizer
  that is not the one the shards were made with.
"""

import glob
import json
import os
import re
import struct
from typing import List, Optional

import datasets
import numpy
from megatron.core.datasets.indexed_dataset import (
    _INDEX_HEADER, DType, IndexedDatasetBuilder, get_bin_path, get_idx_path,
)
from tqdm import tqdm

from data.tokenizer import CodeTokenizer, file_sha256


class ShardError(RuntimeError):
    pass


def shard_prefix(prefix: str, index: int, num_shards: int) -> str:
    return f"{prefix}-{index:05d}-of-{num_shards:05d}"


def check_shard(prefix: str) -> int:
    """Raise ShardError naming the file if the .idx/.bin pair is missing, truncated or inconsistent;
    return the number of tokens. Reads only the .idx header and its last pointer (cheap)."""
    idx_path, bin_path = get_idx_path(prefix), get_bin_path(prefix)
    for path, other in ((idx_path, bin_path), (bin_path, idx_path)):
        if not os.path.isfile(path):
            raise ShardError(
                f"{path} is missing" + (f" (but {other} exists)" if os.path.isfile(other) else "")
                + "; the shard was never finished: re-run scripts/preprocess.py for it"
            )
    idx_size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as stream:
        header = stream.read(34)
        if len(header) < 34 or header[:9] != _INDEX_HEADER:
            raise ShardError(f"{idx_path} is not a megatron index (bad header); re-run preprocessing")
        (dtype_code,) = struct.unpack("<B", header[17:18])
        num_sequences, num_documents = struct.unpack("<QQ", header[18:34])
        expected_idx = 34 + num_sequences * (4 + 8) + num_documents * 8
        if idx_size != expected_idx:
            raise ShardError(
                f"{idx_path} is truncated or corrupt: {idx_size} bytes, its header says "
                f"{expected_idx}; delete {prefix}.{{bin,idx}} and re-run scripts/preprocess.py"
            )
        if num_sequences == 0:
            num_tokens = 0
        else:
            stream.seek(34 + (num_sequences - 1) * 4)
            (last_length,) = struct.unpack("<i", stream.read(4))
            stream.seek(34 + num_sequences * 4 + (num_sequences - 1) * 8)
            (last_pointer,) = struct.unpack("<q", stream.read(8))
            itemsize = DType.size(DType.dtype_from_code(dtype_code))
            num_tokens = last_pointer // itemsize + last_length
    expected_bin = num_tokens * DType.size(DType.dtype_from_code(dtype_code))
    bin_size = os.path.getsize(bin_path)
    if bin_size != expected_bin:
        raise ShardError(
            f"{bin_path} is {'truncated' if bin_size < expected_bin else 'corrupt'}: {bin_size} "
            f"bytes but {idx_path} expects {expected_bin}; delete {prefix}.{{bin,idx}} and re-run "
            f"scripts/preprocess.py"
        )
    return num_tokens


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
    tokenizer = CodeTokenizer(tokenizer_model)
    num_shards = max(1, min(num_shards, len(dataset)))
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
    num_tokens = sum(check_shard(prefix) for prefix in prefixes)
    _write_manifest(output_prefix, tokenizer, num_shards, len(dataset), num_tokens)
    return prefixes


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


def check_manifest(prefix: str, tokenizer: CodeTokenizer, num_shards: Optional[int] = None) -> None:
    """Shards made with another tokenizer (or shard count) would be silently wrong: refuse them."""
    if not os.path.isfile(manifest_path(prefix)):
        return  # plain megatron datasets made elsewhere carry no manifest
    with open(manifest_path(prefix)) as stream:
        manifest = json.load(stream)
    if manifest["tokenizer_sha256"] != tokenizer.sha256:
        raise ShardError(
            f"{prefix} was tokenized with {manifest['tokenizer_model']} (sha256 "
            f"{manifest['tokenizer_sha256'][:12]}), not {tokenizer.model_path} (sha256 "
            f"{tokenizer.sha256[:12]}); use that tokenizer or delete {prefix}-* and re-run preprocessing"
        )
    if num_shards is not None and manifest["num_shards"] != num_shards:
        raise ShardError(
            f"{prefix} was written as {manifest['num_shards']} shards, now {num_shards} requested; "
            f"delete {prefix}-* and {manifest_path(prefix)} to re-shard"
        )
