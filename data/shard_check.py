"""Is a tokenized shard safe to train on? `check_shard(prefix, vocab_size)` checks the whole
megatron-core index (`.idx`) against itself and its token file (`.bin`), and the token ids against
the vocabulary, and raises `ShardError` naming the file, the field and the fix.

Why all of it: megatron reads sequence i as `lengths[i]` tokens at byte `pointers[i]` and trusts
both. A damaged middle pointer trains on shifted tokens without a word; a damaged length shows up
only as a sample count that disagrees with the packing; a token id beyond the vocabulary fails at
the first step with an IndexError in the embedding. Checked, in this order:

    header      the magic bytes, version 1, an integer token dtype, the sequence/document counts
    .idx size   34 + 12 * sequences + 8 * documents bytes
    lengths     every sequence length >= 0
    pointers    pointers[0] = 0 and each the end of the one before (the cumulative lengths)
    .bin size   the end of the last sequence
    documents   document_indices run from 0 to the sequence count, never decreasing
    token ids   all in [0, vocab_size) (one pass over the .bin: the expensive part)

Cost: numpy over the memory-mapped files; the index check takes milliseconds, the token pass about
0.3 s per GB from the page cache and 0.5-1.2 s per GB from disk (bench/bench_shard_check.py). The result is cached in `<prefix>.check.json`
next to the shard, keyed by both files' size, mtime, ctime and inode, so a shard is read once;
later calls cost a stat and a small JSON read. Files changed in the last 2 s are not cached (a
change within the same timestamp tick would go unseen), nor where the cache cannot be written
(read-only data): those are checked again on the next call. Bytes changed in place with the same length and timestamps, or a token
changed to another valid id, are not detected: that needs checksums of the data, which this does
not keep.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy
from megatron.core.datasets.indexed_dataset import (
    _INDEX_HEADER, DType, get_bin_path, get_idx_path,
)

from data.errors import ShardError

logger = logging.getLogger(__name__)

HEADER_BYTES = 34  # magic 9 + version 8 + dtype code 1 + sequence count 8 + document count 8
CHECK_VERSION = 1  # bump when the checks change: older cache files are then ignored
TOKEN_CHUNK = 1 << 24  # tokens per slice of the token pass (32-64 MB): memory stays flat
RACY_NS = 2_000_000_000  # 2 s: above the timestamp granularity of common file systems


@dataclass
class ShardSummary:
    num_tokens: int
    num_sequences: int
    num_documents: int
    min_token: int
    max_token: int


def check_path(prefix: str) -> str:
    """The cache of a shard's check result."""
    return f"{prefix}.check.json"


def _redo(prefix: str) -> str:
    return (f"delete {prefix}.{{bin,idx}} and re-create it (scripts/preprocess.py, which redoes only "
            f"the missing shards) or restore both files from a copy")


def _damaged(path: str, what: str, prefix: str) -> ShardError:
    return ShardError(f"{path} is damaged: {what}. Training on it would read the wrong tokens; "
                      f"{_redo(prefix)}")


def _stamp(path: str) -> list:
    info = os.stat(path)
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def _read_header(prefix: str):
    idx_path, bin_path = get_idx_path(prefix), get_bin_path(prefix)
    for path, other in ((idx_path, bin_path), (bin_path, idx_path)):
        if not os.path.isfile(path):
            raise ShardError(
                f"{path} is missing" + (f" (but {other} exists)" if os.path.isfile(other) else "")
                + "; the shard was never finished: re-run scripts/preprocess.py for it")
    idx_size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as stream:
        header = stream.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or header[:9] != _INDEX_HEADER:
        raise ShardError(f"{idx_path} is not a megatron-core index (its first bytes are not the "
                         f"MMIDIDX header); {_redo(prefix)}")
    (version,) = struct.unpack("<Q", header[9:17])
    if version != 1:
        raise _damaged(idx_path, f"header field version is {version}, megatron-core writes 1", prefix)
    (dtype_code,) = struct.unpack("<B", header[17:18])
    try:
        dtype = DType.dtype_from_code(dtype_code)
    except ValueError:
        dtype = None
    if dtype is None or not numpy.issubdtype(dtype, numpy.integer):
        raise _damaged(idx_path, f"header field dtype code is {dtype_code}, not an integer token "
                                 f"type (uint16 = 8, int32 = 4)", prefix)
    num_sequences, num_documents = struct.unpack("<QQ", header[18:34])
    expected = HEADER_BYTES + num_sequences * 12 + num_documents * 8
    if idx_size != expected:
        raise ShardError(
            f"{idx_path} is truncated or corrupt: {idx_size} bytes, its header (sequence count "
            f"{num_sequences}, document count {num_documents}) says {expected}; {_redo(prefix)}")
    return dtype, num_sequences, num_documents


def _first(mask: numpy.ndarray) -> int:
    return int(numpy.argmax(mask))


def _check_index(prefix: str, dtype, num_sequences: int, num_documents: int) -> int:
    """The index against itself and the .bin size; returns the number of tokens."""
    idx_path, bin_path = get_idx_path(prefix), get_bin_path(prefix)
    itemsize = numpy.dtype(dtype).itemsize
    index = numpy.memmap(idx_path, dtype=numpy.uint8, mode="r")
    n = num_sequences
    lengths = numpy.frombuffer(index, numpy.int32, n, HEADER_BYTES)
    pointers = numpy.frombuffer(index, numpy.int64, n, HEADER_BYTES + 4 * n)
    documents = numpy.frombuffer(index, numpy.int64, num_documents, HEADER_BYTES + 12 * n)
    if n and lengths.min() < 0:
        i = _first(lengths < 0)
        raise _damaged(idx_path, f"sequence_lengths[{i}] is {lengths[i]}, a negative length", prefix)
    ends = numpy.cumsum(lengths, dtype=numpy.int64) * itemsize  # where each sequence should end
    starts = numpy.concatenate([[0], ends[:-1]]) if n else ends
    if n and not numpy.array_equal(pointers, starts):
        i = _first(pointers != starts)
        fits = [size for size in (1, 2, 4, 8) if size != itemsize and numpy.array_equal(
            pointers, starts // itemsize * size)]
        if fits and lengths.any():
            raise _damaged(idx_path, f"header field dtype code says {numpy.dtype(dtype).name} "
                                     f"({itemsize}-byte tokens) but the sequence_pointers step in "
                                     f"{fits[0]}-byte tokens: the dtype code was changed", prefix)
        cause = (f"sequence_pointers[0] is {pointers[0]}, the first sequence starts at byte 0" if i == 0
                 else f"sequence_pointers[{i}] is {pointers[i]} but sequences 0..{i - 1} end at byte "
                      f"{starts[i]} (their sequence_lengths add up to {starts[i] // itemsize} tokens): "
                      f"sequence_lengths[{i - 1}] or sequence_pointers[{i}] was changed")
        raise _damaged(idx_path, cause, prefix)
    expected_bin = int(ends[-1]) if n else 0
    bin_size = os.path.getsize(bin_path)
    if bin_size != expected_bin:
        raise ShardError(
            f"{bin_path} is {'truncated' if bin_size < expected_bin else 'corrupt'}: {bin_size} "
            f"bytes but {idx_path} expects {expected_bin} (the sum of its sequence_lengths, "
            f"{expected_bin // itemsize} tokens; if the .bin is whole, the last sequence_lengths "
            f"entry was changed); {_redo(prefix)}")
    if num_documents < 1 or documents[0] != 0 or documents[-1] != n:
        first = documents[0] if num_documents else None
        last = documents[-1] if num_documents else None
        raise _damaged(idx_path, f"document_indices run from {first} to {last}; they must run from "
                                 f"0 to the sequence count {n}", prefix)
    steps = numpy.diff(documents)
    if len(steps) and steps.min() < 0:
        i = _first(steps < 0) + 1
        raise _damaged(idx_path, f"document_indices[{i}] is {documents[i]}, less than "
                                 f"document_indices[{i - 1}] = {documents[i - 1]}", prefix)
    return expected_bin // itemsize


def _scan_tokens(prefix: str, dtype, num_tokens: int):
    """(min, max) token id of the whole .bin, slice by slice."""
    if num_tokens == 0:
        return 0, -1
    tokens = numpy.memmap(get_bin_path(prefix), dtype=dtype, mode="r")
    low, high = None, None
    for start in range(0, num_tokens, TOKEN_CHUNK):
        chunk = tokens[start:start + TOKEN_CHUNK]
        chunk_low, chunk_high = int(chunk.min()), int(chunk.max())
        low = chunk_low if low is None else min(low, chunk_low)
        high = chunk_high if high is None else max(high, chunk_high)
    return low, high


def _settled(stamps: list) -> bool:
    """Files changed within the last RACY_NS may change again within the same timestamp tick
    (coarse file system clocks): caching their check could hide that change (git's "racily
    clean" entries). Such files are checked again next time."""
    # mtime alone: a later write sets mtime to that tick, which differs from a settled mtime.
    newest = max(stamp[1] for stamp in stamps)
    return time.time_ns() - newest > RACY_NS


def _cached(prefix: str, stamps: list) -> Optional[ShardSummary]:
    try:
        with open(check_path(prefix)) as stream:
            cached = json.load(stream)
        if cached.get("version") == CHECK_VERSION and cached.get("stamps") == stamps:
            return ShardSummary(**cached["summary"])
    except (OSError, ValueError, TypeError, KeyError):
        pass  # absent, unreadable or from another version: check again
    return None


def _store(prefix: str, stamps: list, summary: ShardSummary) -> None:
    tmp_path = f"{check_path(prefix)}.tmp{os.getpid()}"
    try:
        with open(tmp_path, "w") as stream:
            json.dump({"version": CHECK_VERSION, "stamps": stamps, "summary": asdict(summary)}, stream)
        os.replace(tmp_path, check_path(prefix))
    except OSError as err:  # read-only data: check again next time
        logger.debug("cannot cache the check of %s: %s", prefix, err)


def summarize_shard(prefix: str) -> ShardSummary:
    """The whole check (cached); raises ShardError naming the file and field."""
    dtype, num_sequences, num_documents = _read_header(prefix)
    stamps = [_stamp(get_idx_path(prefix)), _stamp(get_bin_path(prefix))]
    summary = _cached(prefix, stamps)
    if summary is None:
        num_tokens = _check_index(prefix, dtype, num_sequences, num_documents)
        low, high = _scan_tokens(prefix, dtype, num_tokens)
        summary = ShardSummary(num_tokens, num_sequences, num_documents, low, high)
        if _settled(stamps):
            _store(prefix, stamps, summary)
    return summary


def _first_out_of_range(prefix: str, vocab_size: int):
    """(sequence, position in it, id) of the first token outside [0, vocab_size)."""
    dtype, n, _ = _read_header(prefix)
    tokens = numpy.memmap(get_bin_path(prefix), dtype=dtype, mode="r")
    for start in range(0, len(tokens), TOKEN_CHUNK):
        chunk = tokens[start:start + TOKEN_CHUNK]
        bad = (chunk < 0) | (chunk >= vocab_size)
        if bad.any():
            where = start + _first(bad)
            index = numpy.memmap(get_idx_path(prefix), dtype=numpy.uint8, mode="r")
            pointers = numpy.frombuffer(index, numpy.int64, n, HEADER_BYTES + 4 * n)
            sequence = int(numpy.searchsorted(pointers, where * numpy.dtype(dtype).itemsize,
                                              side="right")) - 1
            position = where - int(pointers[sequence]) // numpy.dtype(dtype).itemsize
            return sequence, position, int(tokens[where])
    return None


def check_shard(prefix: str, vocab_size: Optional[int] = None) -> int:
    """Raise ShardError naming the file, the field and the fix if the .idx/.bin pair is missing,
    truncated or inconsistent, or (with `vocab_size`) holds a token id outside [0, vocab_size);
    return the number of tokens."""
    summary = summarize_shard(prefix)
    if vocab_size is not None and summary.num_tokens and (
            summary.min_token < 0 or summary.max_token >= vocab_size):
        sequence, position, token = _first_out_of_range(prefix, vocab_size)
        raise ShardError(
            f"{get_bin_path(prefix)} holds token id {token} (sequence {sequence}, token {position}; "
            f"ids span {summary.min_token}..{summary.max_token}) but the tokenizer has {vocab_size} "
            f"ids (0..{vocab_size - 1}): the shard was tokenized with another, larger vocabulary, or "
            f"its bytes are damaged. Use the tokenizer it was made with (data.tokenizer_model), or "
            f"{_redo(prefix)}")
    return summary.num_tokens
