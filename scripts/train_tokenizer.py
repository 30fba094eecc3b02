"""Train the code tokenizer (sentencepiece BPE, byte fallback, BOS/EOS/PAD/FIM specials).

    python -m scripts.train_tokenizer --corpus corpora/*.jsonl src/ --vocab-size 32000 --output tok/code.model
    python -m scripts.train_tokenizer --output tok/stdlib4k.model          # the stdlib train split

Flags outside their range (and an --output that is not a .model file path) exit 2 before the
corpus is read; a full disk exits 3 naming --output, with nothing left there.
"""

import argparse
import os
import sys
import time

from data.cli_args import add_corpus_args, load_corpus
from data.errors import DataConfigError, DataError
from data.tokenizer import TRAINER_OPTIONS, CodeTokenizer, train_tokenizer

# Every byte has its piece (byte_fallback), plus unk/bos/eos/pad and the control symbols.
MIN_VOCAB = 256 + 4 + len(TRAINER_OPTIONS["control_symbols"])
MAX_VOCAB = 1 << 20
MAX_THREADS = 1024


def check_flags(args) -> None:
    """Each flag in its valid range, before the corpus is read (exit 2 naming the flag)."""
    rules = [("--vocab-size", args.vocab_size, MIN_VOCAB <= args.vocab_size <= MAX_VOCAB,
              f"in {MIN_VOCAB}..{MAX_VOCAB} (256 byte pieces and {MIN_VOCAB - 256} specials "
              "at least)"),
             ("--threads", args.threads, 1 <= args.threads <= MAX_THREADS, f"in 1..{MAX_THREADS}"),
             ("--max-sentences", args.max_sentences, args.max_sentences >= 1, "at least 1"),
             ("--max-files", args.max_files, args.max_files >= 0, "0 (all) or more")]
    for flag, value, ok, rule in rules:
        if not ok:
            raise DataConfigError(f"{flag} {value}: it must be {rule}")
    if os.path.isdir(args.output):
        raise DataConfigError(f"--output {args.output} is a folder; give the path of the .model "
                              f"file to write, e.g. {os.path.join(args.output, 'code.model')}")
    if not args.output.endswith(".model"):
        raise DataConfigError(f"--output {args.output}: the tokenizer file's name must end in "
                              f".model, e.g. {args.output}.model")


def _train(texts, args) -> None:
    """train_tokenizer, its failures named by flag: sentencepiece's vocab-size refusals (the corpus
    decides the limits) and a full disk (the temp file is already gone: data/tokenizer.py)."""
    from pretrain.errors import disk_is_full

    try:
        train_tokenizer(texts, args.output, args.vocab_size, args.threads, args.max_sentences)
    except Exception as error:  # noqa: BLE001 sorted into the user's errors and bugs
        if isinstance(error, RuntimeError) and "Vocabulary size" in str(error):
            reason = str(error).split("] ", 1)[-1]
            raise DataConfigError(f"--vocab-size {args.vocab_size} does not fit this corpus: "
                                  f"{reason}") from None
        if disk_is_full(error, args.output):
            raise DataError(f"cannot write the tokenizer {os.path.abspath(args.output)} "
                            "(--output): no space left on the device (nothing was kept there); "
                            "free space on that disk or pass an --output on another") from None
        raise


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_args(parser)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--output", required=True, help="path of the .model file to write")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-sentences", type=int, default=2_000_000,
                        help="sentencepiece samples at most this many chunks of lines")
    args = parser.parse_args(argv)
    check_flags(args)
    corpus = load_corpus(args)
    start = time.time()
    texts = (text for batch in corpus.iter(batch_size=256) for text in batch["text"])
    _train(texts, args)
    tokenizer = CodeTokenizer(args.output)
    print(f"wrote {args.output}: {tokenizer.vocab_size} pieces from {len(corpus)} documents "
          f"in {time.time() - start:.1f}s")


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
