"""Preprocessing throughput on the stdlib corpus: scripts' path (datasets.map workers + indexed shards)
with 1 and 2 workers against a plain single-process sentencepiece encode loop over the same texts.

    .venv/bin/python bench/bench_preprocess.py [--max-files N] [--vocab-size V]

All three tokenize the same documents with the same model; the figures are tokens per second of wall
time, including the shard writing for the pipeline (not the corpus reading, which all share).
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import datasets  # noqa: E402
import sentencepiece as spm  # noqa: E402

from data.config import DataConfig  # noqa: E402
from data.corpus import stdlib_corpus  # noqa: E402
from data.indexed import check_shard, preprocess  # noqa: E402
from data.tokenizer import train_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-files", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1,
                        help="corpus copies (a bigger job amortizes the worker pool start-up)")
    args = parser.parse_args()
    datasets.disable_caching()  # every run tokenizes for real; no map cache hits between runs
    datasets.disable_progress_bars()
    cfg = DataConfig(stdlib_max_files=args.max_files)
    with tempfile.TemporaryDirectory() as workdir:
        corpus = stdlib_corpus(cfg.stdlib_exclude_dirs, 0.0, cfg.stdlib_max_files,
                               cache_dir=os.path.join(workdir, "hf"))["train"]
        texts = list(corpus["text"]) * args.repeat
        documents = datasets.Dataset.from_dict({"text": texts})
        num_bytes = sum(len(t.encode()) for t in texts)
        model = train_tokenizer(texts[:len(texts) // args.repeat], os.path.join(workdir, "tok.model"), args.vocab_size)
        print(f"corpus: {len(texts)} stdlib files (x{args.repeat}), {num_bytes / 1e6:.1f} MB; tokenizer vocab {args.vocab_size}; "
              f"{os.cpu_count()} CPUs")

        processor = spm.SentencePieceProcessor(model_file=model)
        start = time.perf_counter()
        num_tokens = sum(len(processor.encode(text)) + 1 for text in texts)  # +1: EOD, as stored
        baseline = num_tokens / (time.perf_counter() - start)
        print(f"baseline  plain sp.encode loop, 1 process : {baseline / 1e6:6.2f} M tokens/s "
              f"({num_tokens} tokens)")

        for workers in (1, 2):
            prefix = os.path.join(workdir, f"w{workers}", "train")
            start = time.perf_counter()
            shards = preprocess(documents, model, prefix, args.shards, workers, progress=False)
            elapsed = time.perf_counter() - start
            written = sum(check_shard(s) for s in shards)
            assert written == num_tokens, (written, num_tokens)
            rate = written / elapsed
            print(f"pipeline  {workers} worker(s), {args.shards} shards     : {rate / 1e6:6.2f} M tokens/s "
                  f"= {rate / baseline:.2f}x baseline ({elapsed:.2f}s)")


if __name__ == "__main__":
    main()
