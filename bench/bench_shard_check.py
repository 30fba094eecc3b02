"""Cost of the full shard check (data/shard_check.py) on the stdlib shards and a 200 MB shard.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_shard_check.py [--tokens 100000000] [--dir DIR]

For each shard: the index check (header, lengths, pointers against the cumulative lengths, .bin
size, document indices) and the token pass (min/max id over the whole .bin), each the best of 3,
with the shard's pages dropped from the page cache first (cold: posix_fadvise DONTNEED on its two
files only) and without (warm); then a call that finds the cached result (what every later start
pays). The stdlib shards are those of the embedded job (built on first use); the large shard is
synthetic: documents of 200-4000 random uint16 ids up to --tokens tokens (2 bytes each).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder  # noqa: E402

from data.config import DataConfig  # noqa: E402
from data.indexed import list_shards  # noqa: E402
from data.prepare import prepare_data  # noqa: E402
from data.shard_check import (_check_index, _read_header, _scan_tokens, check_path,  # noqa: E402
                              summarize_shard)

SETTLED = 1_000_000_000  # an mtime long past: the check's result may be cached


def drop_page_cache(prefix: str) -> None:
    for ext in (".bin", ".idx"):
        fd = os.open(prefix + ext, os.O_RDONLY)
        os.fsync(fd)  # dirty pages (a fresh copy) are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def best_of(prefix: str, cold: bool, repeats: int = 3):
    index_s, scan_s = float("inf"), float("inf")
    for _ in range(repeats):
        if cold:
            drop_page_cache(prefix)
        start = time.perf_counter()
        header = _read_header(prefix)
        num_tokens = _check_index(prefix, *header)
        middle = time.perf_counter()
        _scan_tokens(prefix, header[0], num_tokens)
        index_s, scan_s = min(index_s, middle - start), min(scan_s, time.perf_counter() - middle)
    return index_s, scan_s, header[1]


def measure(prefix: str, label: str) -> None:
    for ext in (".bin", ".idx"):
        os.utime(prefix + ext, (SETTLED, SETTLED))
    cold_index, cold_scan, sequences = best_of(prefix, cold=True)
    warm_index, warm_scan, _ = best_of(prefix, cold=False)
    if os.path.exists(check_path(prefix)):
        os.remove(check_path(prefix))
    summarize_shard(prefix)  # writes the cache
    start = time.perf_counter()
    for _ in range(100):
        summarize_shard(prefix)
    cached = (time.perf_counter() - start) / 100
    megabytes = os.path.getsize(prefix + ".bin") / 1e6
    print(f"{label}: {megabytes:.1f} MB .bin, {sequences} sequences | index check cold "
          f"{cold_index * 1e3:.1f} ms, warm {warm_index * 1e3:.1f} ms | token pass cold "
          f"{cold_scan * 1e3:.1f} ms, warm {warm_scan * 1e3:.1f} ms | cached call {cached * 1e3:.2f} ms",
          flush=True)


def synthetic_shard(prefix: str, tokens: int) -> None:
    rng = numpy.random.default_rng(0)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.uint16)
    written = 0
    while written < tokens:
        length = int(rng.integers(200, 4000))
        builder.add_document(rng.integers(0, 32000, length, dtype=numpy.uint16), [length])
        written += length
    builder.finalize(prefix + ".idx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=100_000_000, help="large shard size (tokens)")
    parser.add_argument("--dir", default=None, help="work folder (default: a temp folder)")
    args = parser.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="bench-shard-check-")
    os.makedirs(work, exist_ok=True)
    prepared = prepare_data(DataConfig(), seq_length=128)
    for source in list_shards(prepared.train_blend[0][1]):
        copy = os.path.join(work, os.path.basename(source))  # a private copy: no cached result
        for ext in (".bin", ".idx"):
            shutil.copy(source + ext, copy + ext)
        measure(copy, f"stdlib {os.path.basename(source)}")
    large = os.path.join(work, "large")
    if not os.path.isfile(large + ".idx"):
        synthetic_shard(large, args.tokens)
    measure(large, f"synthetic {args.tokens * 2 / 1e6:.0f} MB")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
