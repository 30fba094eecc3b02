"""Loader throughput and memory on the stdlib corpus.

    .venv/bin/python bench/bench_loader.py [--seq-length 2048] [--global-batch 64] [--steps 50]

1. tokens/s and samples/s delivered by `next_global_batch_micro_batches()` (DP=1, so one process
   assembles every sample of every global batch), without and with FIM at rate 0.5;
2. peak RSS of a fresh process that builds a loader and reads the same number of samples from the
   corpus (1x) and from a 10x copy of it (merged with megatron's IndexedDatasetBuilder.add_index):
   the shards are mmapped, so the figure must not grow with the corpus.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from data.config import DataConfig  # noqa: E402
from data.indexed import list_shards  # noqa: E402
from data.loader import build_loader  # noqa: E402
from data.prepare import PreparedData, prepare_data  # noqa: E402


def throughput(cfg, prepared, args) -> None:
    loader = build_loader(cfg, prepared, "train", args.seq_length, args.global_batch,
                          args.micro_batch, 0, 1, 1234)
    loader.next_global_batch_micro_batches()  # first epoch's indices: built once, not per step
    start = time.perf_counter()
    for _ in range(args.steps):
        micro_batches = loader.next_global_batch_micro_batches()
    elapsed = time.perf_counter() - start
    samples = args.steps * args.global_batch
    tokens = samples * args.seq_length
    epochs = (samples + args.global_batch) / loader.stream.samples_per_epoch
    print(f"loader fim_rate={cfg.fim_rate:.1f}: {tokens / elapsed / 1e6:6.2f} M tokens/s, "
          f"{samples / elapsed:8.0f} samples/s ({args.steps} global batches of {args.global_batch}x"
          f"{args.seq_length}, {epochs:.1f} epochs, {len(micro_batches)} micro-batches each)")


def _status_mb(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_rss(prefix: str, tokenizer: str, seq_length: int, samples: int) -> None:
    """Runs in a fresh process: build a loader on `prefix`, read `samples` samples, print memory.
    Anonymous RSS is the process's own memory; file-backed RSS is mmapped shard pages (page cache,
    shared and reclaimable), which grows with what was touched, not with the corpus size."""
    prepared = PreparedData(tokenizer, [[1.0, prefix]], [])
    anon_start = _status_mb("RssAnon")
    loader = build_loader(DataConfig(), prepared, "train", seq_length, 16, 16, 0, 1, 1234)
    while loader.consumed_samples < samples:
        loader.next_global_batch_micro_batches()
    corpus_mb = sum(os.path.getsize(s + ".bin") for s in list_shards(prefix)) / 2**20
    print(f"{corpus_mb:6.1f} MB of tokens: RSS {_status_mb('VmRSS'):6.1f} MB = anonymous "
          f"{_status_mb('RssAnon'):6.1f} MB (+{_status_mb('RssAnon') - anon_start:4.1f} MB for the loader "
          f"and reading) + file-backed {_status_mb('RssFile'):6.1f} MB (libraries + touched shard pages); "
          f"peak {_status_mb('VmHWM'):6.1f} MB")


def merged_copy(prefixes, copies: int, out_prefix: str) -> str:
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
    dtype = IndexedDataset(prefixes[0]).index.dtype
    builder = IndexedDatasetBuilder(out_prefix + ".bin", dtype=dtype)
    for _ in range(copies):
        for prefix in prefixes:
            builder.add_index(prefix)
    builder.finalize(out_prefix + ".idx")
    return out_prefix


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache-dir", default=DataConfig().cache_dir)
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rss-samples", type=int, default=4096)
    parser.add_argument("--rss-child", nargs=2, metavar=("PREFIX", "TOKENIZER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return child_rss(*args.rss_child, args.seq_length, args.rss_samples)

    cfg = DataConfig(cache_dir=args.cache_dir)
    prepared = prepare_data(cfg, args.seq_length)
    throughput(cfg, prepared, args)
    cfg.fim_rate = 0.5
    throughput(cfg, prepared, args)

    print(f"memory of a fresh process reading {args.rss_samples} samples of {args.seq_length} tokens:")
    with tempfile.TemporaryDirectory() as workdir:
        shards = list_shards(prepared.train_blend[0][1])
        for label, prefix in (("1x ", prepared.train_blend[0][1]),
                              ("10x", merged_copy(shards, 10, os.path.join(workdir, "x10")))):
            result = subprocess.run(
                [sys.executable, __file__, "--rss-child", prefix, prepared.tokenizer_model,
                 "--seq-length", str(args.seq_length), "--rss-samples", str(args.rss_samples)],
                capture_output=True, text=True, check=True)
            print(f"  {label}: {result.stdout.strip()}")


if __name__ == "__main__":
    main()
