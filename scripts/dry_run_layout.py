"""Dry-run a parallel layout on a laptop: build one rank's model of a large world on the meta device.

    python scripts/dry_run_layout.py model=plt_7b train=plt_7b parallel=node8_tp2 --world 64 --rank 5
    python scripts/dry_run_layout.py model=plt_7b train=plt_7b parallel.tp=2 parallel.pp=2 \
        --world 64 --rank 63 --params

Positional arguments are the training run's Hydra overrides (composed as pretrain.train does).
  --world N     the number of ranks (GPUs) of the layout
  --rank K      which rank to build (default 0); its tp/pp/dp coordinates are megatron's
  --params      print every parameter of the rank with its shape and dtype
Exit status: 0 when the rank builds and the planner agrees with it, 1 on a layout error (the
message names the key and the fix), 2 when the built model and the planner disagree.
See planning/dry_run.py for what is checked and how (torch's fake process group).
"""

from __future__ import annotations

import argparse
import sys
import warnings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[-1])
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--params", action="store_true")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")

    from omegaconf import OmegaConf

    from model import ConfigError
    from planning.dry_run import dry_run
    from pretrain.errors import EXIT_CONFIG, EXIT_FAILED
    from scripts.plan import compose_config

    config = OmegaConf.to_object(compose_config(args.overrides))
    try:
        report = dry_run(config, args.world, args.rank)
    except (ConfigError, NotImplementedError, ValueError) as error:
        print(f"layout error (world {args.world}, rank {args.rank}): {error}", file=sys.stderr)
        return EXIT_CONFIG
    print(report.format(show_parameters=args.params))
    # The built rank's parameters and the planner's count disagree: a bug in one of them.
    return 0 if report.num_parameters == report.planned_parameters else EXIT_FAILED


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
