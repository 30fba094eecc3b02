"""Write a corpus as jsonl ({"text", "path"} per line), e.g. to inspect the default or ship a folder.

    python -m scripts.make_corpus --corpus stdlib:train --output corpora/stdlib_train.jsonl
    python -m scripts.make_corpus --corpus ~/src/myrepo --extensions .py .rs --output corpora/myrepo.jsonl
"""

import argparse
import os
import sys

from data.cli_args import add_corpus_args, load_corpus


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_args(parser)
    parser.add_argument("--output", required=True, help=".jsonl file to write")
    args = parser.parse_args(argv)
    corpus = load_corpus(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    corpus.to_json(args.output, lines=True, force_ascii=False)
    print(f"wrote {len(corpus)} documents to {args.output}")


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
