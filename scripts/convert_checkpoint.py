"""Convert a checkpoint's model weights between the engines (pretrain/checkpoint/convert.py).

    python -m scripts.convert_checkpoint SRC DST [--to ENGINE]

SRC is an `iter_XXXXXXX/` folder or a checkpoint dir holding a `latest` file, written by either
engine; --to names the engine whose format DST gets (megatron or deepspeed; without it, the engine
that did not write SRC: deepspeed -> megatron, megatron -> deepspeed). DST is a new
or empty checkpoint dir apart from SRC (neither inside the other): the converted `iter_XXXXXXX/`
(same step) and a `latest` file are written there.
Continue the run under the other engine with `checkpoint.resume=DST` (or `checkpoint.dir=DST`):
weights, step, LR schedule, data position and RNG carry over; the Adam moments restart from zero.
"""

from __future__ import annotations

import argparse
import sys
import warnings

for _message in (".*Transformer Engine and Apex are not installed.*", "Apex is not installed.*",
                 "full scope is deprecated.*"):
    warnings.filterwarnings("ignore", message=_message)

from pretrain.checkpoint.convert import checkpoint_engine, convert_checkpoint  # noqa: E402
from pretrain.engines import ENGINE_NAMES  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("src", help="iter_ folder or checkpoint dir (its `latest`)")
    parser.add_argument("dst", help="checkpoint dir to write the converted iter_ folder into")
    parser.add_argument("--to", choices=ENGINE_NAMES, metavar="ENGINE",
                        help=f"the engine to convert into ({', '.join(ENGINE_NAMES)}; default: "
                             "the one that did not write SRC)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="let a DeepSpeed checkpoint you trust unpickle classes beyond its own")
    args = parser.parse_args(argv)
    from pretrain.checkpoint.destination import nothing_left_on_failure

    with nothing_left_on_failure(args.dst, "DST"):  # a full disk: exit 4 naming DST, no debris
        path = convert_checkpoint(args.src, args.dst, args.allow_pickle, target=args.to)
    print(f"wrote {path} (engine={checkpoint_engine(path)}, weights only)")
    return 0


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
