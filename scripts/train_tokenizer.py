"""Train the code tokenizer (sentencepiece BPE, byte fallback, BOS/EOS/PAD/FIM specials).

    python -m scripts.train_tokenizer --corpus corpora/*.jsonl src/ --vocab-size 32000 --output tok/code.model
    python -m scripts.train_tokenizer --output tok/stdlib4k.model          # the stdlib train split
"""

import argparse
import sys
import time

from data.tokenizer import CodeTokenizer, train_tokenizer
from data.cli_args import add_corpus_args, load_corpus


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_args(parser)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--output", required=True, help="path of the .model file to write")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-sentences", type=int, default=2_000_000,
                        help="sentencepiece samples at most this many chunks of lines")
    args = parser.parse_args(argv)
    corpus = load_corpus(args)
    start = time.time()
    texts = (text for batch in corpus.iter(batch_size=256) for text in batch["text"])
    train_tokenizer(texts, args.output, args.vocab_size, args.threads, args.max_sentences)
    tokenizer = CodeTokenizer(args.output)
    print(f"wrote {args.output}: {tokenizer.vocab_size} pieces from {len(corpus)} documents "
          f"in {time.time() - start:.1f}s")


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
