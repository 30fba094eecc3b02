"""Tokenize a corpus into megatron indexed shards `<output>-0000i-of-0000N.{bin,idx}` (+ `<output>.json`).

    python -m scripts.preprocess --corpus corpora/python/*.jsonl --text-key content \
        --tokenizer tok/code.model --output data/python --shards 64 --workers 16

Re-running resumes: finished shards are kept, missing or broken ones are rebuilt. Use the output
prefix in `data.blend: [[weight, data/python], ...]`.
"""

import argparse
import glob
import os
import sys
import time

from data.cli_args import add_corpus_args, check_output_prefix, load_corpus
from data.errors import disk_full
from data.indexed import preprocess


def main(argv=None) -> int:
    """Bad input (a cut jsonl line, no UTF-8 file, a full disk) raises a DataError: run_tool prints
    its one paragraph, exit 3."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_args(parser)
    parser.add_argument("--tokenizer", required=True, help="sentencepiece .model")
    parser.add_argument("--output", required=True, help="output prefix")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="tokenizer processes (datasets num_proc)")
    args = parser.parse_args(argv)
    check_output_prefix(args.output, args.corpus)
    corpus = load_corpus(args)
    start = time.time()
    try:
        shards = preprocess(corpus, args.tokenizer, args.output, args.shards, args.workers)
    except OSError as error:
        full = disk_full(error, f"the shards {args.output}-*", "free space there (or give an "
                         "--output on a disk with room) and re-run: finished shards are kept")
        if full is None:
            raise
        for partial in glob.glob(glob.escape(args.output) + "*.tmp[0-9]*"):  # unfinished shards
            os.remove(partial)
        raise full from None
    print(f"{len(corpus)} documents -> {len(shards)} shards at {args.output} in {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
