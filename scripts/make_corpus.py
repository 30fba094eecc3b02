"""Write a corpus as jsonl ({"text", "path"} per line), e.g. to inspect the default or ship a folder.

    python -m scripts.make_corpus --corpus stdlib:train --output corpora/stdlib_train.jsonl
    python -m scripts.make_corpus --corpus ~/src/myrepo --extensions .py .rs --output corpora/myrepo.jsonl
"""

import argparse
import os
import sys

from data.cli_args import add_corpus_args, load_corpus
from data.errors import disk_full


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_args(parser)
    parser.add_argument("--output", required=True, help=".jsonl file to write")
    args = parser.parse_args(argv)
    corpus = load_corpus(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp_path = f"{args.output}.tmp{os.getpid()}"  # a full disk or a kill leaves no cut jsonl
    try:
        corpus.to_json(tmp_path, lines=True, force_ascii=False)
        os.replace(tmp_path, args.output)
    except OSError as error:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        full = disk_full(error, args.output, "free space there or write elsewhere (--output)")
        if full is None:
            raise
        raise full from None
    print(f"wrote {len(corpus)} documents to {args.output}")


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
