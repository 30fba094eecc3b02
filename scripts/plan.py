"""Plan a run before submitting it: parameters, FLOPs per token, memory per GPU, expected step time.

    python scripts/plan.py model=plt_7b train=plt_7b parallel=node8_tp2 --gpus 8
    python scripts/plan.py model=plt_7b train=plt_7b parallel=node8_tp2 --gpus 64 --loops 1,2,3,4
    python scripts/plan.py model=plt_7b train=plt_7b parallel=node8_tp2 launch=slurm launch.nodes=8

The positional arguments are the training run's Hydra overrides (conf/, composed exactly as
`python -m pretrain.train` composes them, so a typo fails the same way). The options:
  --gpus N            world size (default: launch.nodes x launch.gpus_per_node when launch=... is
                      given, else parallel.tp x parallel.pp, i.e. one data-parallel replica)
  --loops 1,2,3,4     one column per model.num_loops, side by side
  --utilization U     assumed share of peak FLOP/s for the time estimate, in (0, 1] (default 0.45)
  --gpu-memory 80,141 GPU sizes in GB (> 0) to warn against
  --terms             also print the activation bytes term by term
The numbers come from planning/planner.py (formulas and sources in its docstring); FLOPs from
model/flops.py, the function the trainer's logged MFU uses. Exit status 2 when a flag or the layout
is invalid (the message names the flag or key), 0 otherwise; a layout that does not fit prints
WARNING lines.
"""

from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf

from scripts.flag_types import checked


def compose_config(overrides):
    """The run config for these overrides, as the trainer composes it (run_dir never resolved)."""
    from pretrain.config import compose

    cfg = compose(overrides)
    cfg.run_dir = "plan"  # never resolved to a folder; keeps ${now:} out of the way
    return cfg


def default_world_size(cfg) -> int:
    launch = cfg.get("launch")
    if launch is not None and "nodes" in launch and "gpus_per_node" in launch:
        return int(launch.nodes) * int(launch.gpus_per_node)
    return cfg.parallel.tp * cfg.parallel.pp


# Each flag parsed up front (scripts/flag_types.py), never a ValueError or a ZeroDivisionError from
# deep in the planner.
_positive_int = checked(int, lambda value: value >= 1, "a whole number >= 1")
_share = checked(float, lambda value: 0 < value <= 1,
                 "a share of peak FLOP/s in (0, 1], e.g. 0.45")
_gigabytes = checked(float, lambda value: 0 < value < 1e6,
                     "a GPU size in GB (a number > 0, e.g. 80 or 141)", keep_text=True)


def _list_of(item):
    def parse(text: str) -> list:
        return [item(part.strip()) for part in text.split(",")]
    parse.__name__ = item.__name__  # argparse names the type in its message
    return parse


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[-1])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for pretrain.train")
    parser.add_argument("--gpus", type=_positive_int, default=None)
    parser.add_argument("--loops", type=_list_of(_positive_int), default=None,
                        help="comma-separated num_loops, e.g. 1,2,3,4")
    parser.add_argument("--utilization", type=_share, default=None)
    parser.add_argument("--gpu-memory", type=_list_of(_gigabytes), default="80,141")
    parser.add_argument("--terms", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from planning import planner
    from pretrain.config import ConfigError, validate
    from pretrain.errors import EXIT_CONFIG

    cfg = compose_config(args.overrides)
    world_size = args.gpus or default_world_size(cfg)
    loop_counts = args.loops or [cfg.model.num_loops]
    gpu_memory = {f"{gb}GB": planner.GPU_MEMORY_GIB.get(f"{gb}GB", float(gb) * 1e9 / 2**30)
                  for gb in args.gpu_memory}
    plans = []
    for loops in loop_counts:
        config = OmegaConf.to_object(OmegaConf.merge(cfg, {"model": {"num_loops": loops}}))
        try:
            validate(config, world_size)  # the model's own layout checks included
        except ConfigError as error:
            print(f"invalid layout on {world_size} GPUs: {error}", file=sys.stderr)
            return EXIT_CONFIG
        kwargs = {} if args.utilization is None else {"hardware_utilization": args.utilization}
        plans.append(planner.make_plan(config, world_size, gpu_memory_gib=gpu_memory, **kwargs))
    print(planner.format_table(plans))
    if args.terms:
        for plan, loops in zip(plans, loop_counts):
            config = OmegaConf.to_object(OmegaConf.merge(cfg, {"model": {"num_loops": loops}}))
            terms = planner.activation_terms(config.model, plan.layout)
            print(f"\nactivations per micro-batch, R={loops} (GiB): " + ", ".join(
                f"{k} {v / planner.GIB:.3f}" for k, v in terms.items()))
    return 0


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
